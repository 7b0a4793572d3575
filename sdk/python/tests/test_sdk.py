"""Tests of the paddock Python SDK: each one drives a real worker process through a
socketpair, playing the daemon's side of docs/protocol.md.

    python3 -m unittest discover -s sdk/python/tests

Every wait is bounded: socket timeouts and subprocess timeouts, never bare sleeps.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.dirname(HERE)
WORKERS = os.path.join(HERE, "workers")
sys.path.insert(0, SDK)

import paddock  # noqa: E402

TIMEOUT = 10.0  # seconds: generous, only reached when something is broken

HELLO, READY, SETUP_FAILED = 0x01, 0x02, 0x03
REQUEST, REPLY, ERROR, SHUTDOWN = 0x10, 0x11, 0x12, 0x20
BAD_REQUEST = 0x16
BATCH, BATCH_REPLY = 0x17, 0x18
REFUSED = 0x19
STREAM_START, CHUNK, STREAM_END, CANCEL = 0x13, 0x14, 0x15, 0x21


def str16(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


class Worker:
    """A worker process and the daemon's end of its socket."""

    def __init__(self, script, env=None, fd=True):
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PADDOCK_")}
        full_env["PYTHONPATH"] = SDK
        if fd:
            full_env["PADDOCK_FD"] = str(child.fileno())
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(WORKERS, script)],
            pass_fds=[child.fileno()] if fd else [], env=full_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child.close()
        self.stdout = self.stderr = None

    def send(self, ftype, payload=b""):
        self.sock.sendall(struct.pack(">IB", len(payload) + 1, ftype) + payload)

    def request(self, rid, method, body=b"", content_type="application/json",
                deadline_ms=5000):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send(REQUEST, struct.pack(">QI", rid, deadline_ms) + str16(method)
                  + str16(content_type) + body)

    def batch(self, method, items, deadline_ms=5000):
        """Sends a BATCH of (id, content type, body) items."""
        payload = str16(method) + struct.pack(">H", len(items))
        for rid, ctype, body in items:
            if isinstance(body, str):
                body = body.encode("utf-8")
            payload += (struct.pack(">QI", rid, deadline_ms) + str16(ctype)
                        + struct.pack(">I", len(body)) + body)
        self.send(BATCH, payload)

    def batch_reply(self):
        """{id: (outcome, ...)} of the next frame, which must be a BATCH_REPLY."""
        ftype, p = self.recv()
        if ftype != BATCH_REPLY:
            raise AssertionError(f"expected BATCH_REPLY, got 0x{ftype:02x}: {p[:200]!r}")
        (count,) = struct.unpack_from(">H", p, 0)
        at, out = 2, {}
        for _ in range(count):
            rid, outcome = struct.unpack_from(">QB", p, at)
            at += 9
            if outcome == 0:
                (clen,) = struct.unpack_from(">H", p, at)
                ctype = p[at + 2:at + 2 + clen].decode()
                at += 2 + clen
                (blen,) = struct.unpack_from(">I", p, at)
                out[rid] = (0, ctype, p[at + 4:at + 4 + blen])
                at += 4 + blen
            elif outcome == 1:
                status, mlen = struct.unpack_from(">HI", p, at)
                out[rid] = (1, status, p[at + 6:at + 6 + mlen].decode())
                at += 6 + mlen
            else:
                (mlen,) = struct.unpack_from(">I", p, at)
                msg = p[at + 4:at + 4 + mlen].decode()
                at += 4 + mlen
                (tlen,) = struct.unpack_from(">I", p, at)
                out[rid] = (2, msg, p[at + 4:at + 4 + tlen].decode())
                at += 4 + tlen
        if at != len(p):
            raise AssertionError(f"{len(p) - at} bytes left over in BATCH_REPLY")
        if len(out) != count:
            raise AssertionError("an id answered twice")
        return out

    def read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"socket closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv(self):
        (length,) = struct.unpack(">I", self.read_exact(4))
        frame = self.read_exact(length)
        return frame[0], frame[1:]

    def at_eof(self):
        return self.sock.recv(1) == b""

    def handshake(self):
        ftype, p = self.recv()
        assert ftype == HELLO, ftype
        ftype, p = self.recv()
        assert ftype == READY, (ftype, p)
        return json.loads(p)

    def wait(self):
        """The exit status; also collects stdout and stderr."""
        self.stdout, self.stderr = self.proc.communicate(timeout=TIMEOUT)
        self.stdout, self.stderr = self.stdout.decode(), self.stderr.decode()
        return self.proc.returncode

    def close(self):
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=TIMEOUT)


def parse_reply(p):
    (rid,) = struct.unpack_from(">Q", p, 0)
    (clen,) = struct.unpack_from(">H", p, 8)
    return rid, p[10:10 + clen].decode(), p[10 + clen:]


def parse_error(p):
    rid, mlen = struct.unpack_from(">QI", p, 0)
    return rid, p[12:12 + mlen].decode(), p[12 + mlen:].decode()


def parse_bad_request(p):
    """docs/protocol.md: `id: u64`, then the UTF-8 message to the end of the frame."""
    (rid,) = struct.unpack_from(">Q", p, 0)
    return rid, p[8:].decode()  # strict UTF-8


class WorkerTests(unittest.TestCase):
    def start(self, script="basic_worker.py", **kw):
        w = Worker(script, **kw)
        self.addCleanup(w.close)
        return w

    def call(self, w, rid, method, body=b"", **kw):
        w.request(rid, method, body, **kw)
        return w.recv()

    def reply(self, w, rid, method, body=b"", **kw):
        ftype, p = self.call(w, rid, method, body, **kw)
        self.assertEqual(ftype, REPLY, p)
        got_id, ctype, out = parse_reply(p)
        self.assertEqual(got_id, rid)
        return ctype, out

    def error(self, w, rid, method, body=b""):
        ftype, p = self.call(w, rid, method, body)
        self.assertEqual(ftype, ERROR, p)
        got_id, message, tb = parse_error(p)
        self.assertEqual(got_id, rid)
        return message, tb

    def test_a_raised_error_with_a_status_is_refused_with_it(self):
        w = self.start()
        w.handshake()
        ftype, p = self.call(w, 3, "refuse", b"422")
        self.assertEqual(ftype, REFUSED, p)
        rid, status = struct.unpack_from(">QH", p, 0)
        self.assertEqual((rid, status, p[10:].decode()), (3, 422, "not processable"))
        # A 5xx too: the status is the handler's choice.
        ftype, p = self.call(w, 4, "refuse", b"503")
        self.assertEqual(ftype, REFUSED, p)
        self.assertEqual(struct.unpack_from(">QH", p, 0), (4, 503))
        # 400 stays BAD_REQUEST (every daemon since version 2 knows it).
        self.assertEqual(self.bad_request(w, 5, "refuse", b"400"), "not processable")

    def bad_request(self, w, rid, method, body=b""):
        ftype, p = self.call(w, rid, method, body)
        self.assertEqual(ftype, BAD_REQUEST, p)
        got_id, message = parse_bad_request(p)
        self.assertEqual(got_id, rid)
        return message

    def stop(self, w):
        """Shuts the worker down; its stderr (what the daemon would log)."""
        w.send(SHUTDOWN)
        self.assertEqual(w.wait(), 0)
        return w.stderr

    def test_hello_comes_first_then_ready_lists_handlers(self):
        w = self.start()
        ftype, p = w.recv()
        self.assertEqual(ftype, HELLO)
        version, pid = struct.unpack_from(">HI", p, 0)
        self.assertEqual(version, 6)  # version 6: BAD_REQUEST, batches, streams, forks, REFUSED
        self.assertEqual(pid, w.proc.pid)
        meta = json.loads(p[6:])
        self.assertEqual(meta["sdk"], "python")
        self.assertEqual(meta["sdk_version"], "0.1.0")
        self.assertEqual(meta["python"].split(".")[0], "3")
        ftype, p = w.recv()
        self.assertEqual(ftype, READY)
        ready = json.loads(p)
        self.assertEqual(ready["methods"][0], "predict")
        self.assertEqual(sorted(ready["methods"]), sorted(
            ["predict", "raw", "text", "typed", "nothing", "boom", "needs_text",
             "long_bad_request", "long_error", "nan", "big", "thread", "upper",
             "wrong_count", "explode", "refuse_all", "count", "fail_after", "objs", "refuse"]))
        # A batched method is declared safe to run again.
        self.assertEqual(sorted(ready["idempotent"]), [
            "explode", "raw", "refuse_all", "thread", "upper", "wrong_count"])
        self.assertEqual(ready["batch"], {
            "upper": {"max_size": 8, "max_wait_ms": 2},
            "wrong_count": {"max_size": 32, "max_wait_ms": 0},
            "explode": {"max_size": 4, "max_wait_ms": 0},
            "refuse_all": {"max_size": 32, "max_wait_ms": 0}})

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

    def read_stream(self, w, rid):
        """The frames of stream `rid` up to its end: (content type, chunks, end)."""
        ftype, p = w.recv()
        self.assertEqual(ftype, STREAM_START, p)
        got_id, clen = struct.unpack_from(">QH", p, 0)
        self.assertEqual(got_id, rid)
        ctype = p[10:10 + clen].decode()
        chunks = []
        while True:
            ftype, p = w.recv()
            (got_id,) = struct.unpack_from(">Q", p, 0)
            self.assertEqual(got_id, rid)
            if ftype == CHUNK:
                chunks.append(p[8:])
            else:
                return ctype, chunks, (ftype, p[8:])

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

    def test_json_request_gets_json_reply_with_same_id(self):
        w = self.start()
        w.handshake()
        rid = (1 << 32) | 1
        ctype, out = self.reply(w, rid, "predict", json.dumps({"text": "hi"}),
                                deadline_ms=4000)
        self.assertEqual(ctype, "application/json")
        data = json.loads(out)
        self.assertEqual(data["echo"], {"text": "hi"})
        self.assertEqual(data["id"], rid)
        self.assertEqual(data["method"], "predict")
        self.assertEqual(data["content_type"], "application/json")
        self.assertEqual(data["pid"], w.proc.pid)
        self.assertTrue(0 < data["deadline_in"] <= 4.0, data)
        _, out = self.reply(w, rid + 1, "predict", "[1, 2]")
        self.assertEqual(json.loads(out)["calls"], 2)  # same process, state kept

    def test_exception_becomes_error_with_traceback_and_worker_keeps_serving(self):
        w = self.start()
        w.handshake()
        message, tb = self.error(w, 7, "boom", b"oops")
        self.assertEqual(message, "ValueError: bad input: oops")
        self.assertIn("Traceback (most recent call last)", tb)
        self.assertIn("in boom", tb)
        self.assertIn("ValueError: bad input: oops", tb)
        ctype, out = self.reply(w, 8, "predict", b"{}")
        self.assertEqual(json.loads(out)["echo"], {})

    def test_unexpected_exception_traceback_also_goes_to_stderr(self):
        w = self.start()
        w.handshake()
        message, tb = self.error(w, 9, "boom", b"oops")
        self.assertEqual(message, "ValueError: bad input: oops")
        self.assertIn("Traceback (most recent call last)", tb)
        err = self.stop(w)
        self.assertIn("'boom'", err)
        self.assertIn("request 9", err)
        self.assertIn(tb, err)  # the whole traceback, as sent in the ERROR frame

    def test_bad_request_raised_by_a_handler_becomes_bad_request(self):
        w = self.start()
        w.handshake()
        rid = (3 << 32) | 5
        message = self.bad_request(w, rid, "needs_text", b'{"txt": "hi"}')
        self.assertEqual(message, "need a 'text' field")
        # the worker keeps serving, and a good request still gets its reply
        self.assertEqual(self.reply(w, rid + 1, "needs_text", b'{"text": "hi"}'),
                         ("application/json", b'{"text":"hi"}'))
        self.assertEqual(self.stop(w), "")  # a client's mistake is not logged

    def test_invalid_json_body_is_a_bad_request_without_traceback(self):
        w = self.start()
        w.handshake()
        for rid, body in enumerate([b"{not json", b"", b'{"text": "a"} extra',
                                    b'"\xff\xfe\xff"', b"[" * 100000], 1):
            message = self.bad_request(w, rid, "predict", body)
            self.assertIn("JSON", message)
            self.assertNotIn("Traceback", message)
            self.assertNotIn("/", message)  # no file paths
            self.assertNotIn(".py", message)
            self.assertLess(len(message), 200, message)
        self.assertEqual(self.reply(w, 10, "nothing"), ("application/json", b"null"))
        self.assertEqual(self.stop(w), "")

    def test_bad_request_is_cut_to_fit_a_frame_without_splitting_characters(self):
        w = self.start(env={"PADDOCK_MAX_FRAME": "4096"})
        w.handshake()
        ftype, p = self.call(w, 1, "long_bad_request")
        self.assertEqual(ftype, BAD_REQUEST)
        self.assertLessEqual(len(p) + 1, 4096)
        self.assertGreater(len(p) + 1, 4090)
        _, message = parse_bad_request(p)  # decodes as strict UTF-8
        self.assertEqual(set(message), {"é"})

    def test_return_types_choose_content_types(self):
        w = self.start()
        w.handshake()
        blob = bytes(range(256)) * 3
        self.assertEqual(self.reply(w, 1, "raw", blob, content_type="x/y"),
                         ("application/octet-stream", blob))
        self.assertEqual(self.reply(w, 2, "text", "wörld"),
                         ("text/plain; charset=utf-8", "héllo wörld".encode("utf-8")))
        self.assertEqual(self.reply(w, 3, "typed", b"\x89PNG"), ("image/png", b"\x89PNG"))
        self.assertEqual(self.reply(w, 4, "nothing"), ("application/json", b"null"))
        big = os.urandom(3 * 1024 * 1024)
        self.assertEqual(self.reply(w, 5, "raw", big), ("application/octet-stream", big))

    def test_unknown_method_is_an_error(self):
        w = self.start()
        w.handshake()
        message, tb = self.error(w, 1, "nope")
        self.assertEqual(message, "no handler named nope")
        self.assertEqual(self.error(w, 2, "helper")[0], "no handler named helper")
        self.assertEqual(self.reply(w, 3, "nothing"), ("application/json", b"null"))

    def test_nan_is_refused_rather_than_sent_as_invalid_json(self):
        w = self.start()
        w.handshake()
        message, _ = self.error(w, 1, "nan")
        self.assertTrue(message.startswith("ValueError:"), message)

    def test_reply_larger_than_max_frame_is_an_error(self):
        w = self.start(env={"PADDOCK_MAX_FRAME": "4096"})
        w.handshake()
        message, _ = self.error(w, 1, "big", b"5000")
        self.assertIn("too large", message)
        # exactly at the limit: 1 type byte + 8 id + 2 + 24 content type + body
        limit = 4096 - 1 - 8 - 2 - len("application/octet-stream")
        self.assertEqual(self.reply(w, 2, "big", str(limit).encode())[1], b"x" * limit)
        self.assertIn("too large", self.error(w, 3, "big", str(limit + 1).encode())[0])

    def test_error_is_cut_to_fit_a_frame_without_splitting_characters(self):
        w = self.start(env={"PADDOCK_MAX_FRAME": "4096"})
        w.handshake()
        ftype, p = self.call(w, 1, "long_error")
        self.assertEqual(ftype, ERROR)
        self.assertLessEqual(len(p) + 1, 4096)
        _, message, tb = parse_error(p)  # decodes as strict UTF-8
        self.assertTrue(message.startswith("RuntimeError: éé"), message[:40])
        self.assertEqual(self.reply(w, 2, "nothing"), ("application/json", b"null"))

    def test_handlers_and_setup_run_on_the_main_thread(self):
        w = self.start()
        w.handshake()
        _, out = self.reply(w, 1, "thread")
        self.assertEqual(json.loads(out), {"main": True, "setup_main": True, "threads": 1})

    def test_setup_failure_sends_setup_failed_and_exits_nonzero(self):
        w = self.start("setup_fail_worker.py")
        self.assertEqual(w.recv()[0], HELLO)
        ftype, p = w.recv()
        self.assertEqual(ftype, SETUP_FAILED)
        text = p.decode()
        self.assertIn("Traceback", text)
        self.assertIn("load_weights", text)
        self.assertIn("FileNotFoundError: weights.bin is missing", text)
        self.assertEqual(w.wait(), 1)
        self.assertIn("FileNotFoundError: weights.bin is missing", w.stderr)
        self.assertEqual(w.stdout, "")

    def test_no_handlers_says_so_and_how_to_mark_one_before_setup(self):
        w = self.start("no_handlers_worker.py")
        self.assertEqual(w.recv()[0], HELLO)
        ftype, p = w.recv()
        self.assertEqual(ftype, SETUP_FAILED)
        text = p.decode()
        first = text.splitlines()[0]
        self.assertTrue(first.startswith("Empty has no handler"), text)
        self.assertNotIn("setup()", text)
        self.assertNotIn("Traceback", text)
        self.assertIn("@paddock.handler\n        def predict(self, req):", text)
        self.assertEqual(w.wait(), 1)
        # setup() never ran: no model is loaded for a worker that cannot serve.
        self.assertNotIn("SETUP RAN", w.stdout + w.stderr)
        self.assertIn("Empty has no handler", w.stderr)

    def test_eof_makes_the_worker_exit_zero_quietly(self):
        w = self.start()
        w.handshake()
        w.sock.close()
        self.assertEqual(w.wait(), 0)
        self.assertEqual((w.stdout, w.stderr), ("", ""))

    def test_eof_in_the_middle_of_a_frame_exits_zero(self):
        w = self.start()
        w.handshake()
        w.sock.sendall(struct.pack(">I", 100) + b"\x10abc")
        w.sock.close()
        self.assertEqual(w.wait(), 0)

    def test_shutdown_exits_zero(self):
        w = self.start()
        w.handshake()
        self.reply(w, 1, "nothing")
        w.send(SHUTDOWN)
        self.assertEqual(w.wait(), 0)
        self.assertEqual(w.stderr, "")
        self.assertTrue(w.at_eof())

    def test_unknown_frame_type_exits_one(self):
        w = self.start()
        w.handshake()
        w.send(0x7F, b"junk")
        self.assertEqual(w.wait(), 1)
        self.assertIn("0x7f", w.stderr)

    def test_oversized_length_is_refused_before_reading_the_payload(self):
        w = self.start(env={"PADDOCK_MAX_FRAME": "1024"})
        w.handshake()
        w.sock.sendall(struct.pack(">I", 1025) + b"\x10")  # never sends the rest
        self.assertEqual(w.wait(), 1)
        self.assertIn("1025", w.stderr)

    def test_zero_length_frame_exits_one(self):
        w = self.start()
        w.handshake()
        w.sock.sendall(struct.pack(">I", 0))
        self.assertEqual(w.wait(), 1)
        self.assertIn("frame length 0", w.stderr)

    def test_malformed_request_exits_one(self):
        w = self.start()
        w.handshake()
        w.send(REQUEST, struct.pack(">QIH", 1, 1000, 50) + b"pre")  # method cut short
        self.assertEqual(w.wait(), 1)
        self.assertIn("malformed REQUEST", w.stderr)

    def test_without_paddock_fd_explains_and_exits_two(self):
        w = self.start(fd=False)
        self.assertEqual(w.wait(), 2)
        self.assertIn("paddock.toml", w.stderr)
        self.assertIn('command = ["python3", "basic_worker.py"]', w.stderr)
        self.assertIn("paddock run", w.stderr)
        self.assertEqual(w.stdout, "")


class ApiTests(unittest.TestCase):
    def test_handler_decorator_forms(self):
        def f(self, req):
            return 1

        self.assertIs(paddock.handler(f), f)
        self.assertEqual(f._paddock_handler, {"idempotent": False})

        @paddock.handler(idempotent=True)
        def g(self, req):
            return 2

        self.assertEqual(g._paddock_handler, {"idempotent": True})
        self.assertEqual(g(None, None), 2)

    def test_response_and_request(self):
        self.assertEqual(paddock.Response("é", "text/x").body, "é".encode("utf-8"))
        self.assertEqual(paddock.Response(bytearray(b"ab")).content_type,
                         "application/octet-stream")
        with self.assertRaises(TypeError):
            paddock.Response(5)
        r = paddock.Request(5, "predict", "application/json", b'{"a": 1}', 0.0)
        self.assertEqual(r.json(), {"a": 1})
        self.assertEqual(r.text(), '{"a": 1}')
        self.assertEqual(paddock.PROTOCOL_VERSION, 6)

    def test_json_raises_bad_request(self):
        self.assertIn("BadRequest", paddock.__all__)
        self.assertTrue(paddock.BadRequest.__doc__)
        for body in (b"{", b"\xff", b"1 2"):
            r = paddock.Request(5, "predict", "application/json", body, 0.0)
            with self.assertRaises(paddock.BadRequest) as cm:
                r.json()
            self.assertTrue(str(cm.exception).startswith(
                "the request body is not valid JSON: "), str(cm.exception))
            self.assertTrue(cm.exception.__suppress_context__)  # `from None`
            # handlers that caught the ValueError json.loads raised keep working
            self.assertIsInstance(cm.exception, ValueError)


class PlatformTests(unittest.TestCase):
    """The fork guard's platform branches, without the platform: the macOS thread
    count through a stand-in proc_pidinfo, the CUDA check through a stand-in torch."""

    def test_macos_thread_count_reads_pti_threadnum(self):
        import ctypes
        calls = []

        def proc_pidinfo(pid, flavor, arg, buf, size):
            calls.append((pid, flavor, arg, size))
            # struct proc_taskinfo: 6 uint64, then int32 pti_policy ... pti_csw,
            # then pti_threadnum = 7, pti_numrunning = 1, pti_priority = 31.
            raw = struct.pack("=6Q9i3i", *([0] * 6), *([0] * 9), 7, 1, 31)
            ctypes.memmove(buf, raw, len(raw))
            return len(raw)

        self.assertEqual(paddock._darwin_threads(proc_pidinfo), 7)
        self.assertEqual(calls, [(os.getpid(), 4, 0, 96)])
        # A failed call is "unknown", not a count.
        self.assertIsNone(paddock._darwin_threads(lambda *a: 0))

    def test_cuda_is_named_only_when_torch_is_imported_and_initialised(self):
        import types
        saved = sys.modules.get("torch")
        try:
            sys.modules.pop("torch", None)
            self.assertFalse(paddock._cuda_initialised())  # never imports torch
            self.assertNotIn("torch", sys.modules)
            torch = types.ModuleType("torch")
            torch.cuda = types.SimpleNamespace(is_initialized=lambda: True)
            sys.modules["torch"] = torch
            self.assertTrue(paddock._cuda_initialised())
            torch.cuda = types.SimpleNamespace(is_initialized=lambda: False)
            self.assertFalse(paddock._cuda_initialised())
        finally:
            if saved is None:
                sys.modules.pop("torch", None)
            else:
                sys.modules["torch"] = saved


if __name__ == "__main__":
    unittest.main()
