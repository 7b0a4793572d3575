"""The SDK's worker side, request by request: the handshake, answers, errors, bad
requests, setup failures and the protocol's edges.

    python3 -m unittest discover -s sdk/python/tests
"""
from harness import *  # noqa: F401,F403 (the workers, frames and helpers the tests share)


class WorkerTests(WorkerCase):
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

    def test_hello_comes_first_then_ready_lists_handlers(self):
        w = self.start()
        ftype, p = w.recv()
        self.assertEqual(ftype, HELLO)
        version, pid = struct.unpack_from(">HI", p, 0)
        self.assertEqual(version, 6)  # version 6: BAD_REQUEST, batches, streams, forks, REFUSED
        self.assertEqual(pid, w.proc.pid)
        meta = json.loads(p[6:])
        self.assertEqual(meta["sdk"], "python")
        # The version has one source, the Cargo workspace.
        with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
            workspace = tomllib.load(f)["workspace"]["package"]["version"]
        self.assertEqual(meta["sdk_version"], workspace)
        self.assertEqual(meta["sdk_version"], paddock.__version__)
        self.assertEqual(meta["sdk_path"], os.path.dirname(os.path.abspath(paddock.__file__)))
        self.assertTrue(os.path.samefile(meta["executable"], sys.executable), meta)
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
