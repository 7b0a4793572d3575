"""The SDK's public API without a daemon: decorators, requests and responses, and
the fork guard's platform branches."""
from harness import *  # noqa: F401,F403 (the workers, frames and helpers the tests share)


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
