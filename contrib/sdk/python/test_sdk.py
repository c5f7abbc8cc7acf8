"""Tests for the module SDKs (contrib/sdk): each drives a real module
process through its pipes with the tiny frame codec below, as the daemon
would, and checks the frames against proto/worker-protocol.md.

    /usr/bin/python3 -m pytest -q contrib/sdk/python/test_sdk.py

The C tests build modules with gcc against msgpack-c in a temporary
directory and are skipped when either is missing.
"""

import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import msgpack
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SDK_C = os.path.join(ROOT, "contrib", "sdk", "c")
MODULES = os.path.join(ROOT, "contrib", "modules")
SDK_PY = os.path.join(HERE, "stageline_module.py")
MAX = 16 * 1024 * 1024


# ---- the test's own codec and peer ------------------------------------------


def pack(frame):
    payload = msgpack.packb(frame, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def unpack_all(data):
    frames, i = [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        frames.append(msgpack.unpackb(data[i + 4:i + 4 + n], raw=False))
        i += 4 + n
    return frames


class Peer:
    """A module process and the daemon's end of its pipes."""

    def __init__(self, argv, cwd, env=None):
        e = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd),
             "PYTHONPATH": HERE, "STAGELINE_PROTOCOL": "1"}
        e.update(env or {})
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=str(cwd), env=e,
                                  start_new_session=True)
        self.buf = bytearray()
        self.eof = False
        self._err = []
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self):
        for chunk in iter(lambda: self.p.stderr.read1(65536), b""):
            self._err.append(chunk)

    @property
    def stderr(self):
        return b"".join(self._err).decode("utf-8", "replace")

    def send(self, frame):
        self.send_raw(pack(frame))

    def send_raw(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close(self):
        self.p.stdin.close()

    def _fill(self, n, deadline):
        fd = self.p.stdout.fileno()
        while len(self.buf) < n and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within the timeout; stderr:\n{self.stderr}")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.eof = True
                self.buf += chunk

    def recv(self, timeout=10):
        """The next frame, or None at EOF."""
        deadline = time.monotonic() + timeout
        self._fill(4, deadline)
        if len(self.buf) < 4:
            assert not self.buf, f"EOF inside a frame header: {bytes(self.buf)!r}"
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        assert n <= MAX, f"frame of {n} bytes; stderr:\n{self.stderr}"
        self._fill(4 + n, deadline)
        assert len(self.buf) >= 4 + n, "EOF inside a frame"
        payload = bytes(self.buf[4:4 + n])
        del self.buf[:4 + n]
        frame = msgpack.unpackb(payload, raw=False)
        assert isinstance(frame, dict) and isinstance(frame.get("t"), str), frame
        return frame

    def read_rest(self, timeout=10):
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(len(self.buf) + 1, deadline)
        return bytes(self.buf)

    def until_answer(self, timeout=10):
        """Frames up to and including the next result or error."""
        frames = []
        while True:
            f = self.recv(timeout)
            assert f is not None, f"EOF before an answer; stderr:\n{self.stderr}"
            frames.append(f)
            if f["t"] in ("result", "error"):
                return frames

    def wait(self, timeout=10):
        try:
            return self.p.wait(timeout)
        finally:
            self._t.join(timeout)

    def kill(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


@pytest.fixture
def peers():
    started = []
    yield started
    for p in started:
        p.kill()


def task(tid="t-1", workdir="/nonexistent", params=None, inputs=None, attempt=1, **extra):
    f = {"t": "task", "task_id": tid, "job_id": "job-1", "stage": "st", "attempt": attempt,
         "params": params or {}, "inputs": inputs or [], "workdir": str(workdir),
         "deadline": int((time.time() + 60) * 1000), "request_id": "req-1"}
    f.update(extra)
    return f


PRELUDE = "import json, os, sys, time, threading, subprocess\nfrom stageline_module import *\n"


@pytest.fixture
def pymod(tmp_path, peers):
    """Starts a Python module whose source is body (after PRELUDE)."""

    def start(body, env=None):
        src = tmp_path / f"mod{len(peers)}.py"
        src.write_text(PRELUDE + textwrap.dedent(body))
        p = Peer([sys.executable, str(src)], tmp_path, env)
        peers.append(p)
        return p

    return start


def one_shot(body):
    return textwrap.dedent(body) + "\nmodule.run(handle)\n"


# ---- Python SDK: hello and one-shot -----------------------------------------


def test_hello_one_shot_fields(pymod):
    p = pymod(one_shot('module = Module("m", "1.2")\ndef handle(ctx): return {}'))
    assert p.recv() == {"t": "hello", "protocol": 1, "module": "m", "version": "1.2",
                        "persistent": False}


def test_hello_persistent_fields(pymod):
    p = pymod('module = Module("pm", "2", persistent=True, concurrency=7)\n'
              'module.run(lambda ctx: {})\n')
    assert p.recv() == {"t": "hello", "protocol": 1, "module": "pm", "version": "2",
                        "persistent": True, "concurrency": 7}
    p.close()
    assert p.wait() == 0


def test_one_shot_task_fields_and_result(pymod, tmp_path):
    (tmp_path / "input.json").write_text('{"text": "a b"}')
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            return {"task_id": ctx.task_id, "job_id": ctx.job_id, "stage": ctx.stage,
                    "attempt": ctx.attempt, "params": ctx.params, "workdir": ctx.workdir,
                    "deadline": ctx.deadline, "request_id": ctx.request_id,
                    "inputs": [[i.name, i.type, i.path, i.size_bytes, i.format]
                               for i in ctx.inputs],
                    "job_input": ctx.job_input(), "remaining": ctx.remaining() > 50,
                    "cwd": os.getcwd(), "cancelled": ctx.cancelled}
    '''))
    assert p.recv()["t"] == "hello"
    ins = [{"name": "input.json", "type": "job-input", "path": str(tmp_path / "input.json"),
            "size_bytes": 15, "format": "json"}]
    t = task("abc", tmp_path, params={"n": 3, "s": "x"}, inputs=ins, attempt=2)
    p.send(t)
    f = p.recv()
    assert f["t"] == "result" and f["task_id"] == "abc"
    out = f["output"]
    assert out["job_id"] == "job-1" and out["stage"] == "st" and out["attempt"] == 2
    assert out["params"] == {"n": 3, "s": "x"} and out["request_id"] == "req-1"
    assert out["workdir"] == str(tmp_path) and out["cwd"] == str(tmp_path)
    assert out["deadline"] == t["deadline"] / 1000.0 and out["remaining"] is True
    assert out["inputs"] == [["input.json", "job-input", str(tmp_path / "input.json"), 15, "json"]]
    assert out["job_input"] == {"text": "a b"} and out["cancelled"] is False
    assert p.recv() is None
    assert p.wait() == 0


def test_eof_before_task_exits_0(pymod):
    p = pymod(one_shot('module = Module("m", "1")\ndef handle(ctx): return {}'))
    assert p.recv()["t"] == "hello"
    p.close()
    assert p.wait() == 0


def test_progress_log_artifact_warning_frames(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            ctx.progress(0.5, "half", current=1, total=2)
            ctx.progress(7)  # clamped to 1, and never rate-limited
            ctx.log("warning", "careful", k=1, nested={"a": [1, None]})
            ctx.log("debug", "pl\\0ain")  # a NUL: the daemon's text can't hold it
            ctx.artifact("audio", ctx.path("out", "a.wav"), type="audio", format="wav",
                         sample_rate=16000)
            ctx.artifact("cache", "./tmp/c.bin", type="cache", role="intermediate",
                         retained=False, reason="scratch space")
            ctx.warning("dropped words", count=3)
            ctx.resources["gpu_used"] = False
            return {"ok": True}
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    frames = p.until_answer()
    assert all(f["task_id"] == "t1" for f in frames)
    assert frames[0] == {"t": "progress", "task_id": "t1", "fraction": 0.5, "message": "half",
                         "current": 1, "total": 2}
    assert frames[1] == {"t": "progress", "task_id": "t1", "fraction": 1.0}
    assert isinstance(frames[1]["fraction"], float)
    assert frames[2] == {"t": "log", "task_id": "t1", "level": "warn", "message": "careful",
                         "fields": {"k": 1, "nested": {"a": [1, None]}}}
    assert frames[3] == {"t": "log", "task_id": "t1", "level": "debug", "message": "pl\ufffdain"}
    assert frames[4] == {"t": "artifact", "task_id": "t1", "name": "audio", "path": "out/a.wav",
                         "type": "audio", "format": "wav", "role": "output", "retained": True,
                         "meta": {"sample_rate": 16000}}
    assert frames[5] == {"t": "artifact", "task_id": "t1", "name": "cache", "path": "tmp/c.bin",
                         "type": "cache", "role": "intermediate", "retained": False,
                         "reason": "scratch space"}
    assert frames[6] == {"t": "warning", "task_id": "t1", "message": "dropped words",
                         "detail": {"count": 3}}
    assert frames[7] == {"t": "result", "task_id": "t1", "output": {"ok": True},
                         "resources": {"gpu_used": False}}
    assert p.wait() == 0


def test_invalid_calls_raise_and_send_nothing(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            calls = {
                "dotdot": lambda: ctx.artifact("a", "x/../../etc/passwd", type="t"),
                "outside": lambda: ctx.artifact("a", "/etc/passwd", type="t"),
                "empty": lambda: ctx.artifact("a", "", type="t"),
                "role": lambda: ctx.artifact("a", "f", type="t", role="final"),
                "output_not_retained": lambda: ctx.artifact("a", "f", type="t", retained=False),
                "no_type": lambda: ctx.artifact("a", "f", type=""),
                "name_nul": lambda: ctx.artifact("a\\0", "f", type="t"),
                "meta_bytes": lambda: ctx.artifact("a", "f", type="t", blob=b"x"),
                "level": lambda: ctx.log("fatal", "x"),
                "fields_nan": lambda: ctx.log("info", "x", v=float("nan")),
                "fields_key": lambda: ctx.log("info", "x", d={1: 2}),
                "fields_bigint": lambda: ctx.log("info", "x", v=2**64),
                "fields_deep": lambda: ctx.log("info", "x", v=json.loads("[" * 32 + "]" * 32)),
                "fields_object": lambda: ctx.log("info", "x", v=object()),
                "progress_nan": lambda: ctx.progress(float("nan")),
                "progress_str": lambda: ctx.progress("half"),
                "progress_current": lambda: ctx.progress(0.5, current=1.5),
            }
            errors = {}
            for name, call in calls.items():
                try:
                    call()
                except ValueError as e:
                    errors[name] = str(e)
            ctx.artifact("dup", "f", type="t")
            try:
                ctx.artifact("dup", "g", type="t")
            except ValueError as e:
                errors["duplicate"] = str(e)
            return {"errors": errors}
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    frames = p.until_answer()
    assert [f["t"] for f in frames] == ["artifact", "result"]
    errors = frames[-1]["output"]["errors"]
    assert sorted(errors) == sorted([
        "dotdot", "outside", "empty", "role", "output_not_retained", "no_type", "name_nul",
        "meta_bytes",
        "level", "fields_nan", "fields_key", "fields_bigint", "fields_deep", "fields_object",
        "progress_nan", "progress_str", "progress_current", "duplicate"])
    assert "nested deeper than 32" in errors["fields_deep"]
    assert "'..'" in errors["dotdot"]


@pytest.mark.parametrize("category, retryable", [
    ("module", True), ("infra", True), ("input", False), ("cancelled", False)])
def test_module_error_category_defaults(pymod, tmp_path, category, retryable):
    p = pymod(one_shot(f'''
        module = Module("m", "1")
        def handle(ctx):
            raise ModuleError("no good", code="NOPE", category="{category}", lang="xx")
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    assert p.recv() == {"t": "error", "task_id": "t1", "message": "no good", "code": "NOPE",
                        "category": category, "retryable": retryable,
                        "detail": {"lang": "xx"}}
    assert p.wait() == 0


def test_module_error_defaults_and_override(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True)
        def handle(ctx):
            if ctx.params["which"] == "plain":
                raise ModuleError("plain")
            raise ModuleError("override", category="infra", retryable=False)
        module.run(handle)
    ''')
    p.recv()
    p.send(task("a", tmp_path, params={"which": "plain"}))
    assert p.recv() == {"t": "error", "task_id": "a", "message": "plain", "category": "module",
                        "retryable": True}
    p.send(task("b", tmp_path, params={"which": "override"}))
    f = p.recv()
    assert (f["category"], f["retryable"]) == ("infra", False)
    p.close()
    assert p.wait() == 0


def test_uncaught_exception_is_a_retryable_module_error(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def inner_function(d):
            return d["missing"]
        def handle(ctx):
            return inner_function({})
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    f = p.recv()
    assert f["t"] == "error" and f["category"] == "module" and f["retryable"] is True
    assert f["code"] == "UNCAUGHT_EXCEPTION" and f["message"] == "KeyError: 'missing'"
    assert f["detail"]["exception"] == "KeyError"
    assert "inner_function" in f["detail"]["traceback"]
    assert p.wait() == 0
    assert "Traceback" in p.stderr and "inner_function" in p.stderr


@pytest.mark.parametrize("ret, why", [
    ("[1, 2]", "not a dict"),
    ("{'x': float('inf')}", "no JSON form"),
    ("{'b': b'raw'}", "bytes is not a JSON type"),
    ("{'x': 'a' * 5000}", "frame limit"),
    ("{'x': 'a\\0b'}", "NUL"),
    ("{'x': [0] * 300 + [[0] * 4000] * 300}", "values in one frame"),
])
def test_unsendable_output_becomes_an_error(pymod, tmp_path, ret, why):
    p = pymod(one_shot(f'''
        module = Module("m", "1", max_frame_bytes=4096)
        def handle(ctx):
            return {ret}
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    f = p.recv()
    assert f["t"] == "error" and f["code"] == "BAD_OUTPUT" and f["retryable"] is False
    assert why in f["message"]
    assert p.wait() == 0


def test_none_output_is_an_empty_map(pymod, tmp_path):
    p = pymod(one_shot('module = Module("m", "1")\ndef handle(ctx): pass'))
    p.recv()
    p.send(task("t1", tmp_path))
    assert p.recv() == {"t": "result", "task_id": "t1", "output": {}}


def test_print_and_children_do_not_corrupt_stdout(pymod, tmp_path):
    p = pymod(one_shot('''
        print("printed at import")
        module = Module("m", "1")
        def handle(ctx):
            print("printed in the handler")
            sys.stdout.write("written to sys.stdout\\n")
            os.write(1, b"written to fd 1\\n")
            subprocess.run(["echo", "a child's stdout"], check=True)
            got = subprocess.run(["cat"], capture_output=True, timeout=5).stdout
            ctx.progress(0.5)
            return {"child_stdin": got.decode()}
    '''))
    assert p.recv()["t"] == "hello"
    p.send(task("t1", tmp_path))
    assert p.recv()["t"] == "progress"
    assert p.recv() == {"t": "result", "task_id": "t1", "output": {"child_stdin": ""}}
    assert p.recv() is None
    assert p.wait() == 0
    for text in ("printed at import", "printed in the handler", "written to sys.stdout",
                 "written to fd 1", "a child's stdout"):
        assert text in p.stderr


def test_progress_is_rate_limited(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            for i in range(100000):
                ctx.progress(i / 100000)
            ctx.progress(1.0)
            return {}
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    frames = p.until_answer()
    progress = [f for f in frames if f["t"] == "progress"]
    assert 2 <= len(progress) < 100
    assert progress[0]["fraction"] == 0.0 and progress[-1]["fraction"] == 1.0


# ---- Python SDK: persistent mode ---------------------------------------------


def test_persistent_50_concurrent_tasks(pymod, tmp_path):
    # The barrier only opens when all 50 handlers run at the same time.
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=50)
        barrier = threading.Barrier(50, timeout=20)
        def handle(ctx):
            ctx.progress(0.1, "waiting")
            barrier.wait()
            ctx.log("info", "through")
            return {"n": ctx.params["n"]}
        module.run(handle)
    ''')
    assert p.recv()["concurrency"] == 50
    ids = {f"task-{i}": i for i in range(50)}
    for tid, n in ids.items():
        p.send(task(tid, tmp_path, params={"n": n}))
    results = {}
    while len(results) < 50:
        f = p.recv(timeout=30)
        assert f is not None, p.stderr
        assert f["task_id"] in ids, f
        assert f["t"] != "error", f
        if f["t"] == "result":
            results[f["task_id"]] = f["output"]["n"]
    assert results == ids
    p.close()
    assert p.recv() is None
    assert p.wait() == 0


def test_persistent_shutdown_finishes_in_flight_then_exits_0(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=4)
        def handle(ctx):
            time.sleep(0.5)
            return {"done": ctx.task_id}
        module.run(handle)
    ''')
    p.recv()
    p.send(task("a", tmp_path))
    p.send(task("b", tmp_path))
    p.send({"t": "shutdown"})
    time.sleep(0.1)
    p.send(task("late", tmp_path))  # after shutdown: refused, retryable
    got = {}
    for _ in range(3):
        f = p.recv()
        got[f["task_id"]] = f
    assert got["a"]["output"] == {"done": "a"} and got["b"]["output"] == {"done": "b"}
    assert got["late"]["t"] == "error" and got["late"]["code"] == "SHUTTING_DOWN"
    assert got["late"]["category"] == "infra" and got["late"]["retryable"] is True
    assert p.recv() is None
    assert p.wait() == 0


def test_persistent_eof_finishes_in_flight_then_exits_0(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=2)
        def handle(ctx):
            time.sleep(0.3)
            return {}
        module.run(handle)
    ''')
    p.recv()
    p.send(task("a", tmp_path))
    p.send(task("b", tmp_path))
    p.close()
    assert sorted(p.recv()["task_id"] for _ in range(2)) == ["a", "b"]
    assert p.recv() is None
    assert p.wait() == 0


def test_persistent_cancel_reaches_only_its_task(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=2)
        def handle(ctx):
            ctx.progress(0, "started")
            end = time.monotonic() + ctx.params["seconds"]
            while time.monotonic() < end:
                ctx.wait(0.01)
                ctx.check_cancelled()
            return {"finished": True}
        module.run(handle)
    ''')
    p.recv()
    p.send(task("keep", tmp_path, params={"seconds": 0.5}))
    p.send(task("stop", tmp_path, params={"seconds": 30}))
    started = set()
    while len(started) < 2:
        started.add(p.recv()["task_id"])
    p.send({"t": "cancel", "task_id": "stop", "reason": "job_cancelled"})
    p.send({"t": "cancel", "task_id": "unknown", "reason": "deadline"})  # ignored
    got = {}
    for _ in range(2):
        f = p.recv()
        got[f["task_id"]] = f
    assert got["stop"] == {"t": "error", "task_id": "stop", "message": "cancelled (job_cancelled)",
                           "code": "CANCELLED", "category": "cancelled", "retryable": False}
    assert got["keep"]["output"] == {"finished": True}
    p.close()
    assert p.wait() == 0


def test_persistent_frames_after_answer_are_dropped(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=2)
        def handle(ctx):
            def late():
                time.sleep(0.2)
                ctx.progress(0.9, "too late")
                ctx.log("info", "too late")
            if ctx.params.get("late"):
                threading.Thread(target=late).start()
            return {"id": ctx.task_id}
        module.run(handle)
    ''')
    p.recv()
    p.send(task("first", tmp_path, params={"late": True}))
    assert p.recv()["t"] == "result"
    time.sleep(0.5)
    p.send(task("second", tmp_path))
    assert p.recv() == {"t": "result", "task_id": "second", "output": {"id": "second"}}
    p.close()
    assert p.recv() is None
    assert p.wait() == 0
    assert "after the task was answered; dropped" in p.stderr


def test_persistent_error_in_one_task_leaves_the_others(pymod, tmp_path):
    p = pymod('''
        module = Module("m", "1", persistent=True, concurrency=3)
        def handle(ctx):
            if ctx.params["n"] == 1:
                raise RuntimeError("boom")
            return {"n": ctx.params["n"]}
        module.run(handle)
    ''')
    p.recv()
    for n in range(3):
        p.send(task(f"t{n}", tmp_path, params={"n": n}))
    got = {f["task_id"]: f for f in (p.recv() for _ in range(3))}
    assert got["t1"]["t"] == "error" and got["t1"]["message"] == "RuntimeError: boom"
    assert got["t0"]["output"] == {"n": 0} and got["t2"]["output"] == {"n": 2}
    p.close()
    assert p.wait() == 0


# ---- Python SDK: cancel and bad input ----------------------------------------


def test_one_shot_cancel_sets_ctx_cancelled(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            ctx.progress(0, "started")
            deadline = time.monotonic() + 20
            while not ctx.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"cancelled": ctx.cancelled, "reason": ctx.cancel_reason}
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    assert p.recv()["message"] == "started"
    p.send({"t": "cancel", "task_id": "t1", "reason": "deadline"})
    assert p.recv() == {"t": "result", "task_id": "t1",
                        "output": {"cancelled": True, "reason": "deadline"}}
    assert p.wait() == 0


def test_exception_after_cancel_answers_cancelled(pymod, tmp_path):
    p = pymod(one_shot('''
        module = Module("m", "1")
        def handle(ctx):
            ctx.progress(0, "started")
            ctx.wait(20)
            raise BrokenPipeError("the child died")
    '''))
    p.recv()
    p.send(task("t1", tmp_path))
    p.recv()
    p.send({"t": "cancel", "task_id": "t1", "reason": "shutdown"})
    f = p.recv()
    assert f["t"] == "error" and f["category"] == "cancelled" and f["retryable"] is False
    assert "BrokenPipeError" in f["message"]


def test_oversized_frame_from_the_daemon_is_refused(pymod):
    p = pymod(one_shot('module = Module("m", "1")\ndef handle(ctx): return {}'))
    p.recv()
    p.send_raw(struct.pack(">I", MAX + 1))
    assert p.recv() is None
    assert p.wait() == 2
    assert "exceeds the limit" in p.stderr


def test_malformed_frame_from_the_daemon_is_refused(pymod):
    p = pymod(one_shot('module = Module("m", "1")\ndef handle(ctx): return {}'))
    p.recv()
    p.send_raw(pack(["task"]))
    assert p.wait() == 2
    assert "not a map" in p.stderr


def test_module_constructor_validates():
    code = textwrap.dedent('''
        from stageline_module import Module, ModuleError
        bad = [lambda: Module("", "1"), lambda: Module("m", ""),
               lambda: Module("m", "1", persistent=True, concurrency=0),
               lambda: Module("m", "1", concurrency=2), lambda: Module("m", "1", persistent=1),
               lambda: ModuleError("x", category="fatal"), lambda: ModuleError("x", retryable=1)]
        for i, make in enumerate(bad):
            try:
                make()
            except ValueError:
                continue
            raise SystemExit(f"case {i} accepted")
    ''')
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": HERE},
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0, r.stderr.decode()


# ---- the contrib test modules ------------------------------------------------


@pytest.fixture
def contrib(tmp_path, peers):
    def start(name, env=None):
        p = Peer([sys.executable, os.path.join(MODULES, name)], tmp_path, env)
        peers.append(p)
        assert p.recv()["t"] == "hello"
        return p

    return start


def test_sleep_completes_with_progress(contrib, tmp_path):
    p = contrib("sleep.py")
    p.send(task("s", tmp_path, params={"seconds": 0.3, "tick": 0.05}))
    frames = p.until_answer()
    assert frames[-1]["output"] == {"slept": 0.3}
    fractions = [f["fraction"] for f in frames if f["t"] == "progress"]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert p.wait() == 0


def test_sleep_honours_cancel(contrib, tmp_path):
    p = contrib("sleep.py")
    p.send(task("s", tmp_path, params={"seconds": 30}))
    assert p.recv()["t"] == "progress"
    t0 = time.monotonic()
    p.send({"t": "cancel", "task_id": "s", "reason": "job_cancelled"})
    f = p.until_answer()[-1]
    assert f["t"] == "error" and f["category"] == "cancelled"
    assert time.monotonic() - t0 < 2
    assert p.wait() == 0


def test_sleep_bad_param_is_an_input_error(contrib, tmp_path):
    p = contrib("sleep.py")
    p.send(task("s", tmp_path, params={"seconds": "long"}))
    f = p.recv()
    assert (f["t"], f["category"], f["retryable"]) == ("error", "input", False)


@pytest.mark.parametrize("attempt, ok", [(1, False), (2, False), (3, True)])
def test_flaky_fails_the_first_attempts(contrib, tmp_path, attempt, ok):
    p = contrib("flaky.py")
    p.send(task("f", tmp_path, params={"failures": 2}, attempt=attempt))
    f = p.until_answer()[-1]
    if ok:
        assert f["output"] == {"attempt": attempt}
    else:
        assert (f["t"], f["code"], f["category"], f["retryable"]) == (
            "error", "FLAKY", "module", True)
    assert p.wait() == 0


def test_crash_dies_of_sigsegv_without_answering(contrib, tmp_path):
    p = contrib("crash.py")
    p.send(task("c", tmp_path))
    assert p.recv() is None
    assert p.wait() == -signal.SIGSEGV


def test_hang_survives_sigterm_and_cancel(contrib, tmp_path):
    p = contrib("hang.py")
    p.send(task("h", tmp_path))
    p.send({"t": "cancel", "task_id": "h", "reason": "deadline"})
    time.sleep(0.3)
    os.killpg(p.p.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert p.p.poll() is None
    os.killpg(p.p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert p.recv() is None
    assert "received and ignored" in p.stderr


def test_hang_before_hello(tmp_path, peers):
    p = Peer([sys.executable, os.path.join(MODULES, "hang.py")], tmp_path,
             {"HANG_BEFORE_HELLO": "1"})
    peers.append(p)
    with pytest.raises(TimeoutError):
        p.recv(timeout=1)


def test_flood_writes_what_it_says(contrib, tmp_path):
    p = contrib("flood.py")
    p.send(task("fl", tmp_path, params={"stdout_mb": 2, "stderr_mb": 1.5}))
    frames = p.until_answer(timeout=60)
    out = frames[-1]["output"]
    body = frames[:-1]
    assert len(body) == out["log_frames"] + out["progress_frames"]
    assert sum(len(pack(f)) for f in body) == out["stdout_bytes"] >= 2 * 1024 * 1024
    assert p.wait(30) == 0
    assert out["stderr_bytes"] == int(1.5 * 1024 * 1024)
    assert p.stderr.count("flood stderr line") >= out["stderr_bytes"] // 128


@pytest.mark.parametrize("kind", ["oversize", "not_map", "no_t", "unknown_t", "garbage",
                                  "truncated", "stray_text", "bad_type", "bin_in_json",
                                  "second_hello", "unknown_task_id"])
def test_badframes(contrib, tmp_path, kind):
    p = contrib("badframes.py")
    p.send(task("b", tmp_path, params={"kind": kind}))
    raw = p.read_rest(timeout=30)
    assert p.wait() == 0
    (n,) = struct.unpack(">I", raw[:4])
    payload = raw[4:4 + n]

    def decoded():
        assert len(raw) == 4 + n
        return msgpack.unpackb(payload, raw=False)

    if kind == "oversize":
        assert n == MAX + 1 and len(raw) == 4 + n and decoded()["t"] == "log"
    elif kind == "not_map":
        assert isinstance(decoded(), list)
    elif kind == "no_t":
        assert "t" not in decoded()
    elif kind == "unknown_t":
        assert decoded()["t"] == "bogus"
    elif kind == "garbage":
        with pytest.raises(Exception):
            decoded()
    elif kind == "truncated":
        assert n == 100 and len(raw) < 4 + n
    elif kind == "stray_text":
        assert raw.startswith(b"hello") and n > MAX
    elif kind == "bad_type":
        assert decoded()["fraction"] == "half"
    elif kind == "bin_in_json":
        assert decoded()["output"]["blob"] == b"\x00\x01"
    elif kind == "second_hello":
        assert decoded()["t"] == "hello"
    elif kind == "unknown_task_id":
        assert decoded()["task_id"] != "b"


# ---- the driver ---------------------------------------------------------------


def drive(*args, timeout=60):
    return subprocess.run([sys.executable, SDK_PY, "drive", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def test_driver_runs_a_module_and_checks_its_frames(tmp_path):
    r = drive("--workdir", str(tmp_path), "--env", f"PYTHONPATH={HERE}",
              "--input", '{"text": "one two\\nthree\\n"}',
              "--", os.path.join(MODULES, "wordcount.py"))
    assert r.returncode == 0, r.stderr.decode()
    frames = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert frames[0]["t"] == "hello"
    assert frames[-1]["output"] == {"lines": 2, "words": 3, "bytes": 14}
    assert json.loads((tmp_path / "counts.json").read_text())["words"] == 3


def test_driver_reports_errors_and_panics(tmp_path):
    r = drive("--workdir", str(tmp_path), "--params", '{"failures": 1}', "--",
              os.path.join(MODULES, "flaky.py"))
    assert r.returncode == 1
    r = drive("--workdir", str(tmp_path), "--params", '{"kind": "unknown_t"}', "--",
              os.path.join(MODULES, "badframes.py"))
    assert r.returncode == 2 and b"unknown frame type 'bogus'" in r.stderr
    r = drive("--workdir", str(tmp_path), "--timeout", "0.5", "--grace", "0.2", "--",
              os.path.join(MODULES, "hang.py"))
    assert r.returncode == 2 and b"killed by SIGKILL" in r.stderr


def test_driver_persistent_tasks(tmp_path):
    src = tmp_path / "p.py"
    src.write_text(PRELUDE + 'Module("p", "1", persistent=True, concurrency=5)'
                   '.run(lambda ctx: {"id": ctx.task_id})\n')
    r = drive("--workdir", str(tmp_path), "--env", f"PYTHONPATH={HERE}", "--tasks", "5", "--",
              str(src))
    assert r.returncode == 0, r.stderr.decode()
    assert b"5 result(s), 0 error(s), module exit 0" in r.stderr


# ---- the C header ---------------------------------------------------------------

C_TEST_MODULE = r'''
#define _POSIX_C_SOURCE 200809L
#define STAGELINE_MODULE_IMPLEMENTATION
#include "stageline_module.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static void nap_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void handle(struct sl_task *t, void *arg)
{
	const char *mode = sl_param_str(t, "mode", "echo");
	char out[8192];
	(void)arg;
	printf("printf from the handler of %s\n", t->task_id);
	if (strcmp(mode, "echo") == 0) {
		const msgpack_object *job = sl_input_json(t, "input.json");
		const struct sl_input *in = sl_input_find(t, "input.json");
		snprintf(out, sizeof out,
		         "{\"task_id\": \"%s\", \"job_id\": \"%s\", \"stage\": \"%s\", \"attempt\": %d, "
		         "\"workdir\": \"%s\", \"request_id\": \"%s\", \"deadline\": %lld, "
		         "\"n\": %lld, \"x\": %.17g, \"flag\": %s, \"name\": \"%s\", \"missing\": \"%s\", "
		         "\"ninputs\": %zu, \"input_type\": \"%s\", \"input_size\": %lld, "
		         "\"input_format\": \"%s\", \"text\": \"%s\", \"remaining_ok\": %s}",
		         t->task_id, t->job_id, t->stage, t->attempt, t->workdir, t->request_id,
		         (long long)t->deadline_ms, (long long)sl_param_int(t, "n", -1),
		         sl_param_double(t, "x", -1), sl_param_bool(t, "flag", false) ? "true" : "false",
		         sl_param_str(t, "name", "?"), sl_param_str(t, "nope", "default"), t->ninputs,
		         in ? in->type : "", in ? (long long)in->size_bytes : -1LL,
		         in && in->format ? in->format : "", sl_obj_str(t, sl_get(job, "text")),
		         sl_remaining_ms(t) > 50000 ? "true" : "false");
		sl_result_json(t, out);
	} else if (strcmp(mode, "frames") == 0) {
		struct sl_artifact_desc a = {.name = "cache", .path = "tmp/c.bin", .type = "cache",
		                             .role = "intermediate", .discard = true,
		                             .reason = "scratch space",
		                             .meta_json = "{\"bytes\": 12}"};
		char abspath[4096];
		int bad = 0;
		snprintf(abspath, sizeof abspath, "%s/out/a.wav", t->workdir);
		sl_progress_n(t, 3, 4, "three");
		sl_progress(t, 0.5, "within 100 ms of the last: dropped");
		sl_progress(t, 7, NULL);
		sl_log(t, "warning", "careful");
		sl_logf(t, "info", "n=%d s=%s", 42, "x");
		sl_log_json(t, "debug", "with fields", "{\"k\": [1, 2.5, \"s\", null, true]}");
		sl_log(t, "info", "bad \xff byte");
		sl_artifact(t, "audio", abspath, "audio", "wav", NULL);
		sl_artifact_ex(t, &a);
		sl_warning(t, "dropped words", "{\"count\": 3}");
		sl_warning(t, "no detail", NULL);
		bad += sl_artifact(t, "x", "../etc/passwd", "t", NULL, NULL) == -1;
		bad += sl_artifact(t, "x", "a/../../b", "t", NULL, NULL) == -1;
		bad += sl_artifact(t, "x", "/etc/passwd", "t", NULL, NULL) == -1;
		bad += sl_artifact(t, "x", "", "t", NULL, NULL) == -1;
		bad += sl_artifact(t, "x", "f", "t", NULL, "final") == -1;
		bad += sl_artifact(t, "x", "f", "", NULL, NULL) == -1;
		bad += sl_log(t, "fatal", "x") == -1;
		bad += sl_log_json(t, "info", "x", "[1]") == -1;
		bad += sl_log_json(t, "info", "x", "{bad") == -1;
		bad += sl_progress(t, NAN, NULL) == -1;
		bad += sl_warning(t, "x", "{\"a\": }") == -1;
		sl_set_resources_json(t, "{\"gpu_used\": false}");
		snprintf(out, sizeof out, "{\"refused\": %d}", bad);
		sl_result_json(t, out);
	} else if (strcmp(mode, "error") == 0) {
		sl_error_detail(t, "no good", sl_param_str(t, "code", NULL),
		                sl_param_str(t, "category", NULL),
		                (int)sl_param_int(t, "retryable", SL_RETRY_DEFAULT),
		                sl_param_str(t, "detail", NULL));
	} else if (strcmp(mode, "json") == 0) {
		const char *text = sl_param_str(t, "json", "");
		const msgpack_object *o = sl_json_parse(t, text, strlen(text));
		if (o == NULL)
			sl_result_json(t, "{\"parsed\": false}");
		else
			sl_result_object(t, o);
	} else if (strcmp(mode, "result_json") == 0) {
		sl_result_json(t, sl_param_str(t, "json", ""));
	} else if (strcmp(mode, "object") == 0) {
		sl_result_object(t, sl_get(t->params, "value"));
	} else if (strcmp(mode, "big") == 0) {
		size_t n = (size_t)sl_param_int(t, "n", 10);
		char *s = malloc(n + 16);
		memcpy(s, "{\"x\": \"", 7);
		memset(s + 7, 'a', n);
		strcpy(s + 7 + n, "\"}");
		sl_result_json(t, s);
		free(s);
	} else if (strcmp(mode, "noanswer") == 0) {
		return;
	} else if (strcmp(mode, "twice") == 0) {
		sl_result_json(t, "{\"first\": true}");
		if (sl_progress(t, 0.5, NULL) != -1 || sl_result_json(t, "{}") != -1 ||
		    sl_error(t, "x", NULL, NULL, SL_RETRY_DEFAULT) != -1)
			fprintf(stderr, "LATE FRAME ACCEPTED\n");
	} else if (strcmp(mode, "wait_cancel") == 0) {
		long waited = 0;
		sl_progress(t, 0, "started");
		while (!sl_cancelled(t) && waited < 20000) {
			nap_ms(10);
			waited += 10;
		}
		snprintf(out, sizeof out, "cancelled (%s)",
		         sl_cancel_reason(t) ? sl_cancel_reason(t) : "not");
		sl_error(t, out, "CANCELLED", "cancelled", SL_RETRY_DEFAULT);
	} else if (strcmp(mode, "poll_sleep") == 0) {
		long ms = (long)sl_param_int(t, "ms", 300), waited;
		sl_progress(t, 0, "started");
		for (waited = 0; waited < ms; waited += 10) {
			sl_cancelled(t);
			nap_ms(10);
		}
		sl_result_json(t, "{\"slept\": true}");
	} else if (strcmp(mode, "sleep") == 0) {
		nap_ms((long)sl_param_int(t, "ms", 300));
		sl_result_json(t, "{\"slept\": true}");
	} else {
		sl_error(t, "unknown mode", "BAD_MODE", "input", SL_RETRY_DEFAULT);
	}
}

int main(int argc, char **argv)
{
	struct sl_module_config cfg = {.name = "ctest", .version = "0.1"};
	if (argc > 1 && strcmp(argv[1], "persistent") == 0) {
		cfg.persistent = true;
		cfg.concurrency = 4;
	}
	cfg.max_frame_bytes = argc > 2 ? (size_t)atol(argv[2]) : 0;
	if (sl_module_hello(&cfg) != 0)
		return 1;
	printf("printf after hello\n");
	return sl_module_run(handle, NULL);
}
'''

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes",
          "-Wmissing-prototypes", "-Wformat=2", "-Wvla", "-O1", "-g", f"-I{SDK_C}"]
# e.g. SL_SDK_TEST_CFLAGS="-fsanitize=address,undefined" to run the C modules under ASan.
CFLAGS += os.environ.get("SL_SDK_TEST_CFLAGS", "").split()


def _have_c():
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    r = subprocess.run(["gcc", "-E", "-x", "c", "-", "-o", "/dev/null"],
                       input=b"#include <msgpack.h>\n", capture_output=True)
    return None if r.returncode == 0 else "msgpack-c headers (<msgpack.h>) are missing"


_NO_C = _have_c()
needs_c = pytest.mark.skipif(_NO_C is not None, reason=_NO_C or "")


def build_c(tmp_path_factory, name, source, extra=()):
    d = tmp_path_factory.mktemp("c")
    src = d / f"{name}.c"
    src.write_text(source)
    exe = d / name
    r = subprocess.run(["gcc", *CFLAGS, *extra, str(src), "-o", str(exe), "-lmsgpackc"],
                       capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return str(exe)


@pytest.fixture(scope="module")
def cmod(tmp_path_factory):
    if _NO_C:
        pytest.skip(_NO_C)
    return build_c(tmp_path_factory, "ctest", C_TEST_MODULE)


@pytest.fixture
def cpeer(cmod, tmp_path, peers):
    def start(*args):
        p = Peer([cmod, *args], tmp_path)
        peers.append(p)
        return p

    return start


@needs_c
@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_c_header_compiles_strictly(tmp_path, compiler):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    for src in ("noop.c", "wordcount.c"):
        for std in ("-std=c11", "-std=gnu11"):
            r = subprocess.run([compiler, std, *CFLAGS[1:], "-Wpedantic", "-c",
                                os.path.join(MODULES, src), "-o", str(tmp_path / "x.o")],
                               capture_output=True)
            assert r.returncode == 0, r.stderr.decode()


@needs_c
def test_c_hello_and_task_fields(cpeer, tmp_path):
    (tmp_path / "input.json").write_text('{"text": "caf\\u00e9"}')
    p = cpeer()
    assert p.recv() == {"t": "hello", "protocol": 1, "module": "ctest", "version": "0.1",
                        "persistent": False}
    ins = [{"name": "input.json", "type": "job-input", "path": str(tmp_path / "input.json"),
            "size_bytes": 21, "format": "json"}]
    t = task("c-1", tmp_path, inputs=ins, attempt=3,
             params={"n": 7, "x": 2.5, "flag": True, "name": "zoë"})
    p.send(t)
    f = p.recv()
    assert f["t"] == "result" and f["task_id"] == "c-1", (f, p.stderr)
    assert f["output"] == {
        "task_id": "c-1", "job_id": "job-1", "stage": "st", "attempt": 3,
        "workdir": str(tmp_path), "request_id": "req-1", "deadline": t["deadline"], "n": 7,
        "x": 2.5, "flag": True, "name": "zoë", "missing": "default", "ninputs": 1,
        "input_type": "job-input", "input_size": 21, "input_format": "json", "text": "café",
        "remaining_ok": True}
    assert p.recv() is None
    assert p.wait() == 0
    assert "printf after hello" in p.stderr and "printf from the handler of c-1" in p.stderr


@needs_c
def test_c_frames(cpeer, tmp_path):
    p = cpeer()
    p.recv()
    p.send(task("c", tmp_path, params={"mode": "frames"}))
    frames = p.until_answer()
    assert all(f["task_id"] == "c" for f in frames)
    by = [f["t"] for f in frames]
    # The second progress call comes within 100 ms of the first: dropped;
    # fraction 1 never is.
    assert by == ["progress"] * 2 + ["log"] * 4 + ["artifact"] * 2 + ["warning"] * 2 + ["result"]
    assert frames[0] == {"t": "progress", "task_id": "c", "fraction": 0.75, "message": "three",
                         "current": 3, "total": 4}
    assert frames[1] == {"t": "progress", "task_id": "c", "fraction": 1.0}
    assert frames[2] == {"t": "log", "task_id": "c", "level": "warn", "message": "careful"}
    assert frames[3]["message"] == "n=42 s=x"
    assert frames[4]["fields"] == {"k": [1, 2.5, "s", None, True]}
    assert frames[5]["message"] == "bad \ufffd byte"
    assert frames[6] == {"t": "artifact", "task_id": "c", "name": "audio", "path": "out/a.wav",
                         "type": "audio", "format": "wav", "role": "output", "retained": True}
    assert frames[7] == {"t": "artifact", "task_id": "c", "name": "cache", "path": "tmp/c.bin",
                         "type": "cache", "role": "intermediate", "retained": False,
                         "reason": "scratch space", "meta": {"bytes": 12}}
    assert frames[8] == {"t": "warning", "task_id": "c", "message": "dropped words",
                         "detail": {"count": 3}}
    assert frames[9] == {"t": "warning", "task_id": "c", "message": "no detail"}
    assert frames[10] == {"t": "result", "task_id": "c", "output": {"refused": 11},
                          "resources": {"gpu_used": False}}


@needs_c
@pytest.mark.parametrize("params, want", [
    ({}, {"category": "module", "retryable": True}),
    ({"category": "infra"}, {"category": "infra", "retryable": True}),
    ({"category": "input"}, {"category": "input", "retryable": False}),
    ({"category": "cancelled"}, {"category": "cancelled", "retryable": False}),
    ({"category": "input", "retryable": 1}, {"category": "input", "retryable": True}),
    ({"category": "bogus"}, {"category": "module", "retryable": True}),
    ({"code": "E1", "detail": '{"lang": "xx"}'},
     {"code": "E1", "detail": {"lang": "xx"}, "category": "module", "retryable": True}),
    ({"detail": "not json"}, {"category": "module", "retryable": True}),
])
def test_c_error(cpeer, tmp_path, params, want):
    p = cpeer()
    p.recv()
    p.send(task("e", tmp_path, params={"mode": "error", **params}))
    f = p.recv()
    assert f == {"t": "error", "task_id": "e", "message": "no good", **want}
    assert p.wait() == 0


JSON_CASES = [
    '{"a": [1, -2, 9223372036854775807, -9223372036854775808, 1.5, -0.25, 1e300, 2E-3]}',
    '{"s": "\\u00e9\\ud83d\\ude00\\n\\"\\\\\\/\\t\\b\\f\\r", "raw": "zo\u00eb \U0001F600"}',
    '{"t": true, "f": false, "n": null, "e": {}, "l": [], "deep": {"x": [[{"y": [0]}]]}}',
    ' { "ws" :\n[ 1 ,2 ] } ',
]


@needs_c
@pytest.mark.parametrize("text", JSON_CASES)
def test_c_json_parser(cpeer, tmp_path, text):
    p = cpeer()
    p.recv()
    p.send(task("j", tmp_path, params={"mode": "json", "json": text}))
    f = p.recv()
    assert f["t"] == "result", (f, p.stderr)
    assert f["output"] == json.loads(text)


@needs_c
@pytest.mark.parametrize("text", [
    "", "{", '{"a": }', '{"a": 1,}', "[1 2]", '{"a": 01}', '{"a": 1.}', '{"a": -}',
    '{"a": "\\x"}', '{"a": "\\ud800"}', '{"a": "\\udc00x"}', '{"a": "tab\there"}',
    '{"a": 1e999}', '{"a": tru}', '{"a": 1} x', "{'a': 1}", '{1: 2}', '{"a": "unterminated}',
    '{"a": "\\', '{"a": "\\u0000"}',
])
def test_c_json_parser_rejects(cpeer, tmp_path, text):
    p = cpeer()
    p.recv()
    p.send(task("j", tmp_path, params={"mode": "json", "json": text}))
    assert p.recv()["output"] == {"parsed": False}


@needs_c
def test_c_json_big_integer_becomes_a_float(cpeer, tmp_path):
    p = cpeer()
    p.recv()
    p.send(task("j", tmp_path, params={"mode": "json", "json": '{"big": 18446744073709551616}'}))
    f = p.recv()
    assert f["output"] == {"big": 18446744073709551616.0}
    assert isinstance(f["output"]["big"], float)


@needs_c
@pytest.mark.parametrize("params", [
    {"mode": "result_json", "json": "[1, 2]"},
    {"mode": "result_json", "json": "{oops"},
    {"mode": "object", "value": [1]},
    {"mode": "json", "json": '{"deep": ' + "[" * 40 + "]" * 40 + "}"},
    {"mode": "object", "value": {"big": 2**64 - 1}},
    {"mode": "object", "value": {"blob": b"\x00"}},
])
def test_c_bad_output_becomes_an_error(cpeer, tmp_path, params):
    p = cpeer()
    p.recv()
    p.send(task("o", tmp_path, params=params))
    f = p.recv()
    assert (f["t"], f["code"], f["retryable"]) == ("error", "BAD_OUTPUT", False), f


@needs_c
def test_c_output_over_the_frame_limit(cmod, tmp_path, peers):
    p = Peer([cmod, "oneshot", "2000"], tmp_path)
    peers.append(p)
    p.recv()
    p.send(task("o", tmp_path, params={"mode": "big", "n": 3000}))
    f = p.recv()
    assert (f["t"], f["code"]) == ("error", "OUTPUT_TOO_LARGE")


@needs_c
def test_c_no_answer_and_late_frames(cpeer, tmp_path):
    p = cpeer("persistent")
    p.recv()
    p.send(task("n", tmp_path, params={"mode": "noanswer"}))
    f = p.recv()
    assert (f["t"], f["code"], f["category"]) == ("error", "NO_ANSWER", "module")
    p.send(task("tw", tmp_path, params={"mode": "twice"}))
    assert p.recv() == {"t": "result", "task_id": "tw", "output": {"first": True}}
    p.close()
    assert p.recv() is None
    assert p.wait() == 0
    assert "LATE FRAME ACCEPTED" not in p.stderr


@needs_c
def test_c_cancel_one_shot(cpeer, tmp_path):
    p = cpeer()
    p.recv()
    p.send(task("w", tmp_path, params={"mode": "wait_cancel"}))
    assert p.recv()["message"] == "started"
    p.send({"t": "cancel", "task_id": "w", "reason": "deadline"})
    f = p.recv()
    assert f == {"t": "error", "task_id": "w", "message": "cancelled (deadline)",
                 "code": "CANCELLED", "category": "cancelled", "retryable": False}
    assert p.wait() == 0


@needs_c
def test_c_persistent_serves_tasks_in_order_and_exits_on_eof(cpeer, tmp_path):
    p = cpeer("persistent")
    assert p.recv()["concurrency"] == 4
    for i in range(20):
        p.send(task(f"t{i}", tmp_path, params={"mode": "echo" if i % 2 else "error"}))
    got = [p.recv() for _ in range(20)]
    assert [f["task_id"] for f in got] == [f"t{i}" for i in range(20)]
    assert [f["t"] for f in got] == ["error", "result"] * 10
    p.close()
    assert p.recv() is None
    assert p.wait() == 0


@needs_c
def test_c_persistent_shutdown(cpeer, tmp_path):
    p = cpeer("persistent")
    p.recv()
    p.send(task("a", tmp_path, params={"mode": "sleep", "ms": 200}))
    p.send({"t": "shutdown"})
    p.send(task("late", tmp_path))
    assert p.recv()["output"] == {"slept": True}
    f = p.recv()
    assert (f["task_id"], f["code"], f["category"], f["retryable"]) == (
        "late", "SHUTTING_DOWN", "infra", True)
    assert p.recv() is None
    assert p.wait() == 0


@needs_c
def test_c_cancel_seen_ahead_for_a_queued_task(cpeer, tmp_path):
    # While "a" runs (polling sl_cancelled), the cancel for the queued "b"
    # is read: b is answered as cancelled without running.
    p = cpeer("persistent")
    p.recv()
    p.send(task("a", tmp_path, params={"mode": "poll_sleep", "ms": 400}))
    p.send(task("b", tmp_path, params={"mode": "echo"}))
    assert p.recv()["message"] == "started"
    p.send({"t": "cancel", "task_id": "b", "reason": "job_cancelled"})
    p.send({"t": "cancel", "task_id": "gone", "reason": "deadline"})
    assert p.recv() == {"t": "result", "task_id": "a", "output": {"slept": True}}
    f = p.recv()
    assert (f["task_id"], f["t"], f["category"]) == ("b", "error", "cancelled")
    p.send(task("c", tmp_path, params={"mode": "sleep", "ms": 1}))
    assert p.recv()["task_id"] == "c"
    p.close()
    assert p.wait() == 0


@needs_c
def test_c_cancel_read_with_its_task(cpeer, tmp_path):
    # The task and its cancel arrive together: answered without running.
    p = cpeer("persistent")
    p.recv()
    p.send_raw(pack(task("x", tmp_path, params={"mode": "sleep", "ms": 5000})) +
               pack({"t": "cancel", "task_id": "x", "reason": "deadline"}))
    f = p.recv(timeout=3)
    assert f == {"t": "error", "task_id": "x", "message": "cancelled (deadline) before it started",
                 "code": "CANCELLED", "category": "cancelled", "retryable": False}
    p.close()
    assert p.wait() == 0


@needs_c
@pytest.mark.parametrize("raw, why", [
    (struct.pack(">I", MAX + 1), "bigger than"),
    (pack(["task"]), "not a msgpack map"),
    (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "not a msgpack map"),
    (pack({"t": "task", "params": {}}), "without a task_id"),
    (struct.pack(">I", 100) + b"\x81", "ended inside a frame"),
])
def test_c_bad_frames_from_the_daemon(cpeer, raw, why):
    p = cpeer("persistent")
    p.recv()
    p.send_raw(raw)
    p.close()
    assert p.wait() == 2
    assert why in p.stderr


@needs_c
def test_c_noop_answers_many_tasks(tmp_path_factory, tmp_path, peers):
    exe = build_c(tmp_path_factory, "noop", open(os.path.join(MODULES, "noop.c")).read(),
                  ["-O2"])
    p = Peer([exe], tmp_path)
    peers.append(p)
    assert p.recv() == {"t": "hello", "protocol": 1, "module": "noop", "version": "1.0",
                        "persistent": True, "concurrency": 256}
    n = 20000
    blob = b"".join(pack(task(f"n{i}", tmp_path)) for i in range(n))
    threading.Thread(target=lambda: (p.send_raw(blob), p.close()), daemon=True).start()
    for i in range(n):
        assert p.recv() == {"t": "result", "task_id": f"n{i}", "output": {"ok": True}}
    assert p.recv() is None
    assert p.wait() == 0


@needs_c
def test_c_and_python_wordcount_agree(tmp_path_factory, tmp_path, peers):
    exe = build_c(tmp_path_factory, "wordcount",
                  open(os.path.join(MODULES, "wordcount.c")).read())
    text = "the quick\tbrown fox\n\njumps  over\r\nthe lazy dog\n" * 700
    (tmp_path / "input.json").write_text(json.dumps({"text": text}))
    ins = [{"name": "input.json", "type": "job-input", "path": str(tmp_path / "input.json"),
            "size_bytes": 1, "format": "json"}]
    answers = []
    for argv in ([exe], [sys.executable, os.path.join(MODULES, "wordcount.py")]):
        p = Peer(argv, tmp_path)
        peers.append(p)
        assert p.recv()["module"] == "wordcount"
        p.send(task("w", tmp_path, inputs=ins, params={"min_words": 10**6}))
        frames = p.until_answer()
        kinds = [f["t"] for f in frames]
        assert "progress" in kinds and kinds[-3:] == ["log", "warning", "result"]
        assert frames[-4]["t"] == "artifact" and frames[-4]["path"] == "counts.json"
        assert json.loads((tmp_path / "counts.json").read_text()) == frames[-1]["output"]
        answers.append(frames[-1]["output"])
        assert p.wait() == 0
    assert answers[0] == answers[1] == {"lines": 2800, "words": 6300,
                                        "bytes": len(text.encode())}


# ---- docs ---------------------------------------------------------------------


def test_docs_show_the_example_modules_verbatim():
    doc = open(os.path.join(ROOT, "docs", "modules.md")).read()
    blocks = re.findall(r"```(?:python|c)\n(.*?)```", doc, re.S)
    for name in ("wordcount.py", "wordcount.c"):
        src = open(os.path.join(MODULES, name)).read()
        assert src in blocks, f"docs/modules.md does not show contrib/modules/{name} verbatim"
