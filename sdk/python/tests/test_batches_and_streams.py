"""Batched handlers (one call, one result per request) and streamed answers
(chunks, a failure mid-stream, a cancel)."""
from harness import *  # noqa: F401,F403 (the workers, frames and helpers the tests share)


class BatchStreamTests(WorkerCase):
    def test_a_batch_gets_one_result_per_request_with_per_item_errors(self):
        w = self.start()
        w.handshake()
        items = [(100 + i, "text/plain", "abc" if i != 2 else "") for i in range(5)]
        w.batch("upper", items)
        out = w.batch_reply()
        self.assertEqual(sorted(out), [100, 101, 102, 103, 104])
        for rid in (100, 101, 103, 104):
            self.assertEqual(out[rid], (0, "text/plain; charset=utf-8", b"ABC"))
        self.assertEqual(out[102], (1, 422, "empty text"))
        # The worker goes on serving, batches and plain requests alike.
        w.batch("upper", [(7, "text/plain", "x")])
        self.assertEqual(w.batch_reply(), {7: (0, "text/plain; charset=utf-8", b"X")})
        ctype, body = self.reply(w, 8, "upper", "one")
        self.assertEqual(body, b"ONE")

    def test_a_batched_handler_that_raises_fails_every_item_and_logs_once(self):
        w = self.start()
        w.handshake()
        w.batch("explode", [(1, "t", "a"), (2, "t", "b")])
        out = w.batch_reply()
        for rid in (1, 2):
            kind, message, tb = out[rid]
            self.assertEqual((kind, message), (2, "RuntimeError: boom on 2"))
            self.assertIn("Traceback (most recent call last)", tb)
        w.batch("refuse_all", [(3, "t", "a"), (4, "t", "b")])
        self.assertEqual(w.batch_reply(), {3: (1, 400, "no batch today"),
                                           4: (1, 400, "no batch today")})
        err = self.stop(w)
        self.assertEqual(err.count("batched handler 'explode' failed on a batch of 2"), 1, err)

    def test_a_wrong_number_of_results_fails_the_batch_instead_of_mixing_answers(self):
        w = self.start()
        w.handshake()
        w.batch("wrong_count", [(1, "t", "a"), (2, "t", "b"), (3, "t", "c")])
        out = w.batch_reply()
        self.assertEqual(sorted(out), [1, 2, 3])
        for rid in (1, 2, 3):
            self.assertEqual(out[rid][0], 2)
            self.assertIn("returned 1 results for 3 requests", out[rid][1])

    def test_a_generator_streams_one_chunk_per_yield(self):
        w = self.start()
        w.handshake()
        w.request(5, "count", b"3", content_type="text/plain")
        ctype, chunks, (end, _) = self.read_stream(w, 5)
        self.assertEqual(ctype, "text/plain; charset=utf-8")
        self.assertEqual(chunks, [b"0\n", b"1\n", b"2\n"])
        self.assertEqual(end, STREAM_END)
        w.request(6, "objs")
        ctype, chunks, (end, _) = self.read_stream(w, 6)
        self.assertEqual(ctype, "application/x-ndjson")
        self.assertEqual(chunks, [b'{"a":1}\n', b"[1,2]\n"])
        self.assertEqual(end, STREAM_END)

    def test_an_exception_mid_stream_ends_it_with_an_error_not_an_end(self):
        w = self.start()
        w.handshake()
        w.request(7, "fail_after")
        _, chunks, (end, p) = self.read_stream(w, 7)
        self.assertEqual(chunks, [b"a", b"b"])
        self.assertEqual(end, ERROR)
        (mlen,) = struct.unpack_from(">I", p, 0)
        self.assertEqual(p[4:4 + mlen].decode(), "RuntimeError: mid-stream")
        ctype, body = self.reply(w, 8, "raw", b"still serving")
        self.assertEqual(body, b"still serving")

    def test_cancel_closes_the_generator_and_the_worker_serves_on(self):
        w = self.start()
        w.handshake()
        w.request(9, "count", b"100000000", content_type="text/plain")
        ftype, _ = w.recv()
        self.assertEqual(ftype, STREAM_START)
        for _ in range(2):
            self.assertEqual(w.recv()[0], CHUNK)
        w.send(CANCEL, struct.pack(">Q", 9))
        while True:  # what was sent before the CANCEL arrived, then the end
            ftype, p = w.recv()
            if ftype != CHUNK:
                break
        self.assertEqual(ftype, STREAM_END)
        ctype, body = self.reply(w, 10, "raw", b"next")
        self.assertEqual(body, b"next")
        err = self.stop(w)
        self.assertIn("count finally ran", err)

    def test_batch_decorator_checks_its_limits(self):
        with self.assertRaises(ValueError):
            paddock.batch(max_size=0)
        with self.assertRaises(ValueError):
            paddock.batch(max_size=5000)
        with self.assertRaises(ValueError):
            paddock.batch(max_wait="1h")
        with self.assertRaises(ValueError):
            paddock.batch(max_wait="20s")
        self.assertEqual(paddock._wait_ms("0.25s"), 250)
        self.assertEqual(paddock._wait_ms(0.005), 5)
        with self.assertRaises(ValueError):
            paddock.Error("ok?", status=200)
        self.assertEqual(paddock.Error("x").status, 500)
