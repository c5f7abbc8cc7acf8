"""stageline_module: the Python SDK for stageline worker modules.

A module is a program the daemon runs to execute a pipeline stage; it speaks
the worker protocol (proto/worker-protocol.md) on its stdin and stdout. This
file implements that protocol with the standard library and msgpack only, so
a module is a handler function:

    from stageline_module import Module, ModuleError

    module = Module("wordcount", "1.0")

    @module.task
    def handle(ctx):
        text = ctx.job_input().get("text", "")
        return {"words": len(text.split())}

    if __name__ == "__main__":
        module.run()

Importing this file claims the process's standard streams: the protocol
streams move to private descriptors, file descriptor 1 (and sys.stdout)
become stderr, so a stray print() or a child process writing to its stdout
lands in the stage log instead of corrupting the frame stream, and file
descriptor 0 (and sys.stdin) become /dev/null, so a child process that reads
its stdin (ffmpeg does) cannot steal frames. Import it before anything that
might print.

Run as a script, it is a driver that plays the daemon for one module, for
testing by hand (docs/modules.md, "Testing a module by hand"):

    python3 stageline_module.py drive --params '{"n": 3}' -- ./mymodule.py
"""

import json
import math
import os
import struct
import sys
import threading
import time
import traceback

import msgpack

__all__ = [
    "Cancelled",
    "Input",
    "Module",
    "ModuleError",
    "ProtocolError",
    "TaskContext",
    "check_json",
    "decode_payload",
    "encode_frame",
    "read_frame",
]

PROTOCOL = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # of a frame's map, the frame itself being depth 1
MAX_ITEMS = 65536  # entries of one array or map
MAX_VALUES = 1024 * 1024  # values in one frame: the daemon's decoder caps them
LEVELS = ("debug", "info", "warn", "error")
CATEGORIES = ("input", "module", "infra", "cancelled")
ROLES = ("output", "intermediate")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TRACEBACK_MAX = 64 * 1024
_MESSAGE_MAX = 64 * 1024


class ProtocolError(Exception):
    """The peer broke the framing or the shape of a frame."""


class ModuleError(Exception):
    """Raise from a handler to answer the task with an `error` frame.

    category is input (the task's input is bad: never retried), module (the
    default), infra (something outside the module failed) or cancelled.
    retryable defaults by category: true for module and infra, false for
    input and cancelled. Keyword arguments become the error's `detail` map.
    """

    def __init__(self, message, code=None, category="module", retryable=None, **detail):
        super().__init__(message)
        if category not in CATEGORIES:
            raise ValueError(f"ModuleError category {category!r} is not one of {CATEGORIES}")
        if code is not None and not isinstance(code, str):
            raise ValueError("ModuleError code must be a string")
        if retryable is not None and not isinstance(retryable, bool):
            raise ValueError("ModuleError retryable must be a bool or None")
        self.message = str(message)
        self.code = code
        self.category = category
        self.retryable = _default_retryable(category) if retryable is None else retryable
        self.detail = detail


class Cancelled(ModuleError):
    """Raised by ctx.check_cancelled(): answers the task as cancelled."""

    def __init__(self, reason=None):
        super().__init__(f"cancelled ({reason or 'unknown reason'})", code="CANCELLED",
                         category="cancelled", retryable=False)
        self.reason = reason


def _default_retryable(category):
    return category in ("module", "infra")


# ---------------------------------------------------------------------------
# The codec: pure functions, shared by the module side and the driver.


def encode_frame(frame, max_bytes=MAX_FRAME_BYTES):
    """Returns the frame (a dict with key "t") as length-prefixed bytes.

    Raises ValueError when msgpack can't encode it or it exceeds max_bytes.
    """
    try:
        payload = msgpack.packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{frame.get('t')} frame can't be encoded: {e}") from None
    if len(payload) > max_bytes:
        raise ValueError(f"{frame.get('t')} frame is {len(payload)} bytes; "
                         f"the frame limit is {max_bytes}")
    return struct.pack(">I", len(payload)) + payload


def decode_payload(payload):
    """Decodes one frame's payload; raises ProtocolError unless it is a map
    holding exactly one msgpack value whose key "t" is a string."""
    try:
        frame = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises a zoo of types for bad input
        raise ProtocolError(f"frame is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame is a {type(frame).__name__}, not a map")
    if not isinstance(frame.get("t"), str):
        raise ProtocolError("frame has no string key 't'")
    return frame


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(fd, max_bytes=MAX_FRAME_BYTES):
    """Reads one frame from a file descriptor: exactly 4 bytes of length,
    then exactly that many bytes. Returns the decoded map, or None at EOF
    on a frame boundary. Raises ProtocolError on a truncated, oversized or
    malformed frame; a frame over max_bytes is refused before its payload is
    read."""
    header = _read_exact(fd, 4)
    if not header:
        return None
    if len(header) < 4:
        raise ProtocolError(f"stream ended inside a frame header ({len(header)} of 4 bytes)")
    (n,) = struct.unpack(">I", header)
    if n > max_bytes:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_bytes}")
    payload = _read_exact(fd, n)
    if len(payload) < n:
        raise ProtocolError(f"stream ended inside a frame ({len(payload)} of {n} bytes)")
    return decode_payload(payload)


def check_json(value, what="value", depth=2):
    """Checks that value can travel in a JSON-carrying map (params, output,
    detail, fields, meta, resources): None, bool, 64-bit int, finite float,
    str, list/tuple and dict with str keys, within the nesting and size
    limits. Strings hold no NUL character (the daemon stores text in C
    strings and PostgreSQL jsonb, which can't). depth is the value's nesting
    level in its frame (a frame's own keys are at 2). Raises ValueError
    naming the offending path."""
    count = [0]
    _check_json(value, what, depth, count)


def _check_str(v, path):
    if "\0" in v:
        raise ValueError(f"{path}: string contains a NUL character")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: string is not valid Unicode (lone surrogate)") from None


def _check_json(v, path, depth, count):
    count[0] += 1
    if count[0] > MAX_VALUES - 64:  # leaves room for the frame's own keys
        raise ValueError(f"{path}: more than {MAX_VALUES - 64} values in one frame")
    if v is None or isinstance(v, (bool, str)):
        if isinstance(v, str):
            _check_str(v, path)
        return
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"{path}: integer {v} does not fit in 64 bits")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{path}: {v} has no JSON form")
        return
    if isinstance(v, (list, tuple, dict)):
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if len(v) > MAX_ITEMS:
            raise ValueError(f"{path}: {len(v)} entries; at most {MAX_ITEMS} are allowed")
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path}: map key {k!r} is not a string")
                _check_str(k, f"{path} key {k!r}")
                count[0] += 1
                _check_json(item, f"{path}.{k}", depth + 1, count)
        else:
            for i, item in enumerate(v):
                _check_json(item, f"{path}[{i}]", depth + 1, count)
        return
    raise ValueError(f"{path}: {type(v).__name__} is not a JSON type")


def _text(s, limit=_MESSAGE_MAX):
    """Free text (messages) is sent as valid UTF-8 whatever it holds."""
    s = s if isinstance(s, str) else str(s)
    if "\0" in s:
        s = s.replace("\0", "\ufffd")
    if len(s) > limit:
        s = s[:limit] + f"... [{len(s) - limit} characters cut]"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def _artifact_path(path, workdir):
    """The artifact path relative to workdir, or ValueError. An absolute
    path inside workdir is made relative; anything that could escape it is
    refused."""
    p = os.fspath(path)
    if not isinstance(p, str) or not p or "\0" in p:
        raise ValueError(f"artifact path {path!r} is empty or not text")
    if os.path.isabs(p):
        wd = os.path.normpath(workdir or "")
        ap = os.path.normpath(p)
        if not workdir or not (ap + os.sep).startswith(wd.rstrip(os.sep) + os.sep):
            raise ValueError(f"artifact path {p!r} is absolute and not inside the workdir "
                             f"{workdir!r}; give it relative to the workdir")
        p = os.path.relpath(ap, wd)
    if ".." in p.split("/"):
        raise ValueError(f"artifact path {p!r} contains '..'")
    p = os.path.normpath(p)
    if p in (".", "") or p.startswith("/"):
        raise ValueError(f"artifact path {path!r} names no file")
    return p


# ---------------------------------------------------------------------------
# The process's standard streams.


def _claim_stdio():
    """Moves the protocol streams to private, close-on-exec descriptors and
    points fd 0 at /dev/null and fd 1 at stderr. Returns (in_fd, out_fd)."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    in_fd = os.dup(0)  # os.dup makes non-inheritable descriptors
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull, "r")
    sys.stdout = sys.stderr
    return in_fd, out_fd


if __name__ == "__main__":
    _IN_FD = _OUT_FD = None  # the driver keeps its terminal
else:
    _IN_FD, _OUT_FD = _claim_stdio()


class _Conn:
    """The module's end of the pipes: frame writes are whole and serialized."""

    def __init__(self, in_fd, out_fd, max_bytes):
        self.in_fd, self.out_fd, self.max_bytes = in_fd, out_fd, max_bytes
        self._wlock = threading.Lock()

    def send(self, frame):
        self.write_raw(encode_frame(frame, self.max_bytes))

    def write_raw(self, data):
        with self._wlock:
            view = memoryview(data)
            try:
                while view:
                    n = os.write(self.out_fd, view)
                    view = view[n:]
            except OSError as e:
                # The daemon closed our stdout or went away: nothing we
                # send can arrive, so stop now rather than work for no one.
                _fatal(f"stageline_module: writing a frame failed ({e}); exiting")

    def read(self):
        return read_frame(self.in_fd, self.max_bytes)


def _fatal(message, status=1):
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    finally:
        os._exit(status)


def _note(message):
    sys.stderr.write(f"stageline_module: {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Tasks.


class Input:
    """One of the task's inputs: a file already fetched into the workdir."""

    def __init__(self, d):
        self.name = d.get("name")
        self.type = d.get("type")
        self.path = d.get("path")
        self.size_bytes = d.get("size_bytes")
        self.format = d.get("format")

    def open(self, mode="rb"):
        return open(self.path, mode)

    def read_bytes(self):
        with open(self.path, "rb") as f:
            return f.read()

    def read_text(self, encoding="utf-8"):
        with open(self.path, "r", encoding=encoding) as f:
            return f.read()

    def read_json(self):
        with open(self.path, "rb") as f:
            return json.load(f)

    def __repr__(self):
        return (f"Input(name={self.name!r}, type={self.type!r}, path={self.path!r}, "
                f"size_bytes={self.size_bytes!r}, format={self.format!r})")


class TaskContext:
    """What a handler gets: the task's fields and the calls that send frames
    about it. The calls are thread-safe; once the task is answered, further
    calls are dropped with a note on stderr (a persistent module must never
    send a frame for a task the daemon considers finished)."""

    def __init__(self, module, frame):
        self._module = module
        self.task_id = frame["task_id"]
        self.job_id = frame.get("job_id")
        self.stage = frame.get("stage")
        self.attempt = frame.get("attempt") if isinstance(frame.get("attempt"), int) else 1
        params = frame.get("params")
        self.params = params if isinstance(params, dict) else {}
        self.inputs = [Input(i) for i in frame.get("inputs") or [] if isinstance(i, dict)]
        self.workdir = frame.get("workdir")
        dl = frame.get("deadline")
        self.deadline = dl / 1000.0 if isinstance(dl, (int, float)) else None
        self.request_id = frame.get("request_id")
        self.resources = {}  # sent with the result: module-measured figures
        self.cancel_reason = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._done = False
        self._dropped = 0
        self._artifacts = set()
        self._last_progress = None

    def __repr__(self):
        return (f"TaskContext(task_id={self.task_id!r}, stage={self.stage!r}, "
                f"attempt={self.attempt})")

    # -- cancel and deadline

    @property
    def cancelled(self):
        """True once a cancel frame arrived for this task."""
        return self._cancel.is_set()

    def check_cancelled(self):
        """Raises Cancelled if the task was cancelled: call it between steps."""
        if self._cancel.is_set():
            raise Cancelled(self.cancel_reason)

    def wait(self, seconds):
        """Sleeps up to seconds, returning True early if the task is cancelled."""
        return self._cancel.wait(seconds)

    def remaining(self):
        """Seconds left before the deadline (negative once past), or None."""
        return None if self.deadline is None else self.deadline - time.time()

    def _set_cancelled(self, reason):
        self.cancel_reason = reason if isinstance(reason, str) else None
        self._cancel.set()

    # -- inputs

    def path(self, *parts):
        """A path inside the task's workdir (use it in persistent modules,
        whose cwd is not the workdir)."""
        return os.path.join(self.workdir or ".", *parts)

    def input(self, name):
        """The input named name; ModuleError(category infra) if missing."""
        for i in self.inputs:
            if i.name == name:
                return i
        raise ModuleError(f"no input named {name!r}", code="MISSING_INPUT", category="infra",
                          inputs=[i.name for i in self.inputs])

    def job_input(self):
        """The job's input (input.json, type job-input), parsed; {} if none."""
        for i in self.inputs:
            if i.type == "job-input":
                return i.read_json()
        return {}

    def stage_output(self, stage):
        """The output map of a stage this one needs, parsed."""
        return self.input(f"{stage}.output").read_json()

    # -- frames

    def progress(self, fraction, message=None, current=None, total=None):
        """Reports progress: fraction in 0..1 (clamped). Updates closer
        together than the module's progress_interval are dropped (the daemon
        keeps at most 10 a second anyway), except the first and fraction 1."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError(f"progress fraction must be a number, not {fraction!r}")
        if math.isnan(fraction):
            raise ValueError("progress fraction is NaN")
        fraction = min(1.0, max(0.0, float(fraction)))
        interval = self._module.progress_interval
        now = time.monotonic()
        if interval > 0 and fraction < 1.0 and self._last_progress is not None \
                and now - self._last_progress < interval:
            return
        frame = {"t": "progress", "task_id": self.task_id, "fraction": fraction}
        if message is not None:
            frame["message"] = _text(message)
        for key, v in (("current", current), ("total", total)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"progress {key} must be an integer, not {v!r}")
                check_json(v, key)
                frame[key] = v
        self._last_progress = now
        self._send(frame)

    def log(self, level, message, **fields):
        """A line in the stage log. level: debug, info, warn (or warning),
        error. Keyword arguments become its fields."""
        if level == "warning":
            level = "warn"
        if level not in LEVELS:
            raise ValueError(f"log level {level!r} is not one of {LEVELS}")
        frame = {"t": "log", "task_id": self.task_id, "level": level, "message": _text(message)}
        if fields:
            check_json(fields, "fields")
            frame["fields"] = fields
        self._send(frame)

    def artifact(self, name, path, type, format=None, role="output", retained=True,
                 reason=None, **meta):
        """Declares a file the task wrote, for upload and the manifest.

        path is relative to the workdir (an absolute path inside it is made
        relative). role "output" files are handed to dependent stages and
        kept; role "intermediate" files are kept only when retained, and
        reason says why they exist. Keyword arguments become its meta map.
        """
        for key, v in (("name", name), ("type", type)):
            if not isinstance(v, str) or not v:
                raise ValueError(f"artifact {key} must be a non-empty string, not {v!r}")
            _check_str(v, f"artifact {key}")
        if format is not None:
            if not isinstance(format, str):
                raise ValueError(f"artifact format must be a string, not {format!r}")
            _check_str(format, "artifact format")
        if role not in ROLES:
            raise ValueError(f"artifact role {role!r} is not one of {ROLES}")
        if not isinstance(retained, bool):
            raise ValueError("artifact retained must be a bool")
        if role == "output" and not retained:
            raise ValueError("an output artifact is always retained; use role='intermediate'")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("artifact reason must be a string")
        rel = _artifact_path(path, self.workdir)
        frame = {"t": "artifact", "task_id": self.task_id, "name": name, "path": rel,
                 "type": type, "role": role, "retained": retained}
        if format is not None:
            frame["format"] = format
        if reason is not None:
            frame["reason"] = _text(reason)
        if meta:
            check_json(meta, "meta")
            frame["meta"] = meta
        with self._lock:
            if name in self._artifacts:
                raise ValueError(f"artifact {name!r} was already declared")
            self._artifacts.add(name)
        self._send(frame)

    def warning(self, message, **detail):
        """Something the result should be read with; recorded in the manifest."""
        frame = {"t": "warning", "task_id": self.task_id, "message": _text(message)}
        if detail:
            check_json(detail, "detail")
            frame["detail"] = detail
        self._send(frame)

    def _send(self, frame, final=False):
        with self._lock:
            if self._done:
                self._dropped += 1
                if self._dropped == 1:
                    _note(f"task {self.task_id}: {frame['t']} frame after the task was "
                          "answered; dropped (and so will be any later one)")
                return False
            self._module._conn.send(frame)
            if final:
                self._done = True
            return True

    # -- answers (the SDK's, from what the handler returned or raised)

    def _answer_result(self, output):
        if output is None:
            output = {}
        try:
            if not isinstance(output, dict):
                raise ValueError(f"the handler returned a {type(output).__name__}, not a dict")
            check_json(output, "output")
            frame = {"t": "result", "task_id": self.task_id, "output": output}
            if self.resources:
                check_json(self.resources, "resources")
                frame["resources"] = self.resources
            self._send(frame, final=True)
        except ValueError as e:
            _note(f"task {self.task_id}: the result can't be sent: {e}")
            self._answer_error(f"invalid result: {e}", code="BAD_OUTPUT", category="module",
                               retryable=False)

    def _answer_error(self, message, code=None, category="module", retryable=None, detail=None):
        frame = {"t": "error", "task_id": self.task_id, "message": _text(message),
                 "category": category,
                 "retryable": _default_retryable(category) if retryable is None else retryable}
        if code is not None:
            frame["code"] = _text(code, 256)
        if detail:
            try:
                check_json(detail, "detail")
                frame["detail"] = detail
            except ValueError as e:
                frame["detail"] = {"unsendable_detail": _text(repr(detail), 4096),
                                   "why": str(e)}
        try:
            self._send(frame, final=True)
        except ValueError:  # too big even so: the answer must go out
            frame.pop("detail", None)
            frame["message"] = _text(frame["message"], 4096)
            self._send(frame, final=True)


# ---------------------------------------------------------------------------
# The module.


class Module:
    """A worker module: its hello, and the loop that serves its tasks.

    persistent: one process serves many tasks, up to concurrency at once
    (handlers run in a thread pool). Otherwise the process serves one task
    and exits. progress_interval: the least time between two progress frames
    of a task (0 sends every one). max_frame_bytes: match the daemon's
    limits.max_frame_bytes if it was changed.
    """

    def __init__(self, name, version, persistent=False, concurrency=1,
                 progress_interval=0.1, max_frame_bytes=MAX_FRAME_BYTES):
        for key, v in (("name", name), ("version", version)):
            if not isinstance(v, str) or not v:
                raise ValueError(f"Module {key} must be a non-empty string")
            _check_str(v, f"Module {key}")
        if not isinstance(persistent, bool):
            raise ValueError("Module persistent must be a bool")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("Module concurrency must be an integer >= 1")
        if not persistent and concurrency != 1:
            raise ValueError("a one-shot module serves one task: concurrency must be 1")
        self.name, self.version = name, version
        self.persistent, self.concurrency = persistent, concurrency
        self.progress_interval = float(progress_interval)
        self.max_frame_bytes = int(max_frame_bytes)
        self._handler = None
        self._conn = None
        self._hello_lock = threading.Lock()

    def task(self, fn):
        """Decorator: registers fn(ctx) as the handler run() serves."""
        self._handler = fn
        return fn

    def hello(self):
        """Sends the hello frame (once). run() does it; call it earlier if the
        module's setup takes long, as the daemon wants hello within 10 s of
        spawning the module (tasks wait in the pipe meanwhile)."""
        with self._hello_lock:
            if self._conn is not None:
                return
            if _IN_FD is None:
                raise RuntimeError("stageline_module is running as the driver, not a module")
            conn = _Conn(_IN_FD, _OUT_FD, self.max_frame_bytes)
            frame = {"t": "hello", "protocol": PROTOCOL, "module": self.name,
                     "version": self.version, "persistent": self.persistent}
            if self.persistent:
                frame["concurrency"] = self.concurrency
            conn.send(frame)
            self._conn = conn

    def run(self, handler=None):
        """Serves tasks with handler (or the @task one), then exits the
        process: status 0 after the task (one-shot) or at EOF / shutdown
        (persistent), 2 if the daemon's frames were malformed."""
        handler = handler or self._handler
        if handler is None:
            raise RuntimeError("no handler: pass one to run() or decorate it with @module.task")
        self.hello()
        status = self._serve_persistent(handler) if self.persistent else self._serve_one(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(status)

    def _execute(self, handler, ctx):
        try:
            output = handler(ctx)
        except ModuleError as e:
            ctx._answer_error(e.message, e.code, e.category, e.retryable, e.detail)
        except Exception as e:
            tb = traceback.format_exc()
            sys.stderr.write(f"task {ctx.task_id}: uncaught exception\n{tb}")
            sys.stderr.flush()
            detail = {"exception": type(e).__name__, "traceback": tb[-_TRACEBACK_MAX:]}
            if ctx.cancelled:
                # Failing after a cancel is usually the cancel's doing (a
                # killed child, a closed file): answer what was asked.
                ctx._answer_error(f"cancelled ({ctx.cancel_reason}); then {type(e).__name__}: {e}",
                                  code="CANCELLED", category="cancelled", detail=detail)
            else:
                ctx._answer_error(f"{type(e).__name__}: {e}", code="UNCAUGHT_EXCEPTION",
                                  category="module", retryable=True, detail=detail)
        else:
            ctx._answer_result(output)

    def _serve_one(self, handler):
        conn = self._conn
        try:
            while True:
                frame = conn.read()
                if frame is None or frame["t"] == "shutdown":
                    return 0
                if frame["t"] == "task":
                    break
                _note(f"ignoring a {frame['t']!r} frame before the task")
        except ProtocolError as e:
            _note(f"bad frame from the daemon: {e}")
            return 2
        if not isinstance(frame.get("task_id"), str):
            _note("task frame without a task_id")
            return 2
        ctx = TaskContext(self, frame)

        def watch():
            try:
                while True:
                    f = conn.read()
                    if f is None:
                        return
                    if f["t"] == "cancel" and f.get("task_id", ctx.task_id) == ctx.task_id:
                        ctx._set_cancelled(f.get("reason"))
                    elif f["t"] != "cancel":
                        _note(f"ignoring a {f['t']!r} frame: a one-shot module serves one task")
            except ProtocolError as e:
                _note(f"bad frame from the daemon: {e}")
            except OSError:
                pass

        threading.Thread(target=watch, name="stageline-stdin", daemon=True).start()
        self._execute(handler, ctx)
        return 0

    def _serve_persistent(self, handler):
        from concurrent.futures import ThreadPoolExecutor

        conn = self._conn
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="stageline-task")
        cond = threading.Condition()
        inflight = {}
        state = {"closing": False, "status": 0}

        def run_task(ctx):
            try:
                self._execute(handler, ctx)
            finally:
                with cond:
                    inflight.pop(ctx.task_id, None)
                    cond.notify_all()

        def close(status=0):
            with cond:
                state["closing"] = True
                state["status"] = max(state["status"], status)
                cond.notify_all()

        def reader():
            # Runs until EOF even after a shutdown frame, so cancels for the
            # tasks still in flight arrive.
            try:
                while True:
                    f = conn.read()
                    if f is None:
                        close()
                        return
                    t = f["t"]
                    if t == "task":
                        tid = f.get("task_id")
                        if not isinstance(tid, str):
                            raise ProtocolError("task frame without a task_id")
                        ctx = TaskContext(self, f)
                        with cond:
                            closing = state["closing"]
                            duplicate = tid in inflight
                            if not closing and not duplicate:
                                inflight[tid] = ctx
                        if duplicate:
                            _note(f"task {tid} is already running; the duplicate is ignored")
                        elif closing:
                            ctx._answer_error("the module is shutting down", code="SHUTTING_DOWN",
                                              category="infra", retryable=True)
                        else:
                            pool.submit(run_task, ctx)
                    elif t == "cancel":
                        with cond:
                            ctx = inflight.get(f.get("task_id"))
                        if ctx is not None:
                            ctx._set_cancelled(f.get("reason"))
                    elif t == "shutdown":
                        close()
                    else:
                        _note(f"ignoring an unknown {t!r} frame")
            except ProtocolError as e:
                _note(f"bad frame from the daemon: {e}; finishing the tasks in flight")
                with cond:
                    for ctx in inflight.values():
                        ctx._set_cancelled("shutdown")
                close(2)
            except OSError as e:
                _note(f"reading frames failed: {e}")
                close(1)

        threading.Thread(target=reader, name="stageline-stdin", daemon=True).start()
        with cond:
            while not (state["closing"] and not inflight):
                cond.wait(1.0)
        pool.shutdown(wait=True)
        return state["status"]


# ---------------------------------------------------------------------------
# The driver: plays the daemon for one module (python3 stageline_module.py drive).

_FRAME_KEYS = {
    # frame type -> {key: (Python types, required?)}
    "hello": {"protocol": (int, True), "module": (str, True), "version": (str, True),
              "persistent": (bool, False), "concurrency": (int, False)},
    "progress": {"fraction": ((int, float), True), "message": (str, False),
                 "current": (int, False), "total": (int, False)},
    "log": {"level": (str, True), "message": (str, True), "fields": (dict, False)},
    "artifact": {"name": (str, True), "path": (str, True), "type": (str, True),
                 "format": (str, False), "role": (str, False), "retained": (bool, False),
                 "reason": (str, False), "meta": (dict, False)},
    "warning": {"message": (str, True), "detail": (dict, False)},
    "result": {"output": (dict, True), "resources": (dict, False)},
    "error": {"message": (str, True), "code": (str, False), "category": (str, False),
              "retryable": (bool, False), "detail": (dict, False)},
}
_JSON_KEYS = ("fields", "meta", "detail", "output", "resources")


def check_module_frame(frame, persistent):
    """The daemon's view of one frame from a module: None if acceptable,
    else the protocol error. (Task-id bookkeeping is the caller's.)"""
    t = frame["t"]
    spec = _FRAME_KEYS.get(t)
    if spec is None:
        return f"unknown frame type {t!r}"
    for key, (types, required) in spec.items():
        if key not in frame:
            if required:
                return f"{t} frame without {key!r}"
            continue
        v = frame[key]
        if isinstance(v, bool) and types is not bool:
            return f"{t}.{key} is a bool"
        if not isinstance(v, types):
            return f"{t}.{key} is a {type(v).__name__}"
        if isinstance(v, str) and "\0" in v:
            return f"{t}.{key} contains a NUL byte"
        if key in _JSON_KEYS:
            try:
                check_json(v, key)
            except ValueError as e:
                return f"{t}: {e}"
    if t != "hello":
        tid = frame.get("task_id")
        if persistent and not isinstance(tid, str):
            return f"{t} frame without a task_id from a persistent module"
        if tid is not None and not isinstance(tid, str):
            return f"{t}.task_id is not a string"
    if t == "hello":
        if frame["protocol"] != PROTOCOL:
            return f"hello.protocol is {frame['protocol']}, not {PROTOCOL}"
        if frame.get("concurrency", 1) < 1:
            return "hello.concurrency < 1"
    elif t == "log" and frame["level"] not in LEVELS:
        return f"log.level {frame['level']!r} is not one of {LEVELS}"
    elif t == "artifact":
        p = frame["path"]
        if not p or p.startswith("/") or ".." in p.split("/"):
            return f"artifact.path {p!r} is not relative to the workdir"
        if frame.get("role", "output") not in ROLES:
            return f"artifact.role {frame['role']!r} is not one of {ROLES}"
    elif t == "error" and frame.get("category", "module") not in CATEGORIES:
        return f"error.category {frame['category']!r} is not one of {CATEGORIES}"
    return None


def _drive(argv):
    import argparse
    import queue
    import shutil
    import signal
    import subprocess
    import tempfile
    import uuid

    ap = argparse.ArgumentParser(
        prog="stageline_module.py drive",
        description="Run a worker module as the daemon would, send it task(s), print every "
        "frame it sends as a JSON line and check each against the protocol. Exit status: "
        "0 all tasks completed, 1 some answered with an error, 2 a panic (exit or protocol "
        "error without an answer, a bad exit status, a timeout).")
    ap.add_argument("--params", default="{}", help="the task's params, a JSON object")
    ap.add_argument("--input", default="{}", help="the job's input, a JSON object "
                    "(written to input.json, type job-input)")
    ap.add_argument("--dep", action="append", default=[], metavar="STAGE=JSONFILE",
                    help="a dependency's output.json (input <STAGE>.output, type stage-output)")
    ap.add_argument("--file", action="append", default=[], metavar="PATH[:TYPE]",
                    help="a file copied into the workdir and passed as an input (type: file)")
    ap.add_argument("--workdir",
                    help="the task's workdir (default: a new temporary directory, kept)")
    ap.add_argument("--stage", default="test")
    ap.add_argument("--attempt", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds until the deadline: then cancel, SIGTERM, SIGKILL")
    ap.add_argument("--cancel-after", type=float, metavar="SECONDS",
                    help="send cancel (reason job_cancelled) after this many seconds")
    ap.add_argument("--grace", type=float, default=5.0,
                    help="seconds between cancel and SIGTERM, and between SIGTERM and SIGKILL")
    ap.add_argument("--tasks", type=int, default=1,
                    help="persistent modules: send this many tasks at once")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra environment variable (as the config's env)")
    ap.add_argument("--max-frame-bytes", type=int, default=MAX_FRAME_BYTES)
    ap.add_argument("command", nargs="+", help="the module's command; a lone .py file runs "
                    "with this Python")
    a = ap.parse_args(argv)

    def die(msg):
        sys.stderr.write(f"drive: {msg}\n")
        return 2

    try:
        params = json.loads(a.params)
        job_input = json.loads(a.input)
    except ValueError as e:
        return die(f"--params/--input: {e}")
    if not isinstance(params, dict):
        return die("--params must be a JSON object")
    workdir = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="stageline-drive-"))
    os.makedirs(workdir, exist_ok=True)
    inputs = []

    def add_input(name, type_, path, fmt):
        inputs.append({"name": name, "type": type_, "path": path,
                       "size_bytes": os.path.getsize(path), "format": fmt})

    p = os.path.join(workdir, "input.json")
    with open(p, "w") as f:
        json.dump(job_input, f)
    add_input("input.json", "job-input", p, "json")
    for d in a.dep:
        stage, _, src = d.partition("=")
        if not stage or not src:
            return die(f"--dep {d!r}: want STAGE=JSONFILE")
        dst = os.path.join(workdir, f"{stage}.output.json")
        shutil.copyfile(src, dst)
        add_input(f"{stage}.output", "stage-output", dst, "json")
    for spec in a.file:
        src, _, type_ = spec.partition(":")
        dst = os.path.join(workdir, os.path.basename(src))
        if os.path.abspath(src) != dst:
            shutil.copyfile(src, dst)
        ext = os.path.splitext(dst)[1].lstrip(".") or None
        add_input(os.path.basename(src), type_ or "file", dst, ext)

    cmd = list(a.command)
    if len(cmd) == 1 and cmd[0].endswith(".py"):
        cmd = [sys.executable, cmd[0]]
    cmd[0] = cmd[0] if os.sep not in cmd[0] else os.path.abspath(cmd[0])
    cmd[1:] = [os.path.abspath(c) if c.endswith(".py") and os.path.exists(c) else c
               for c in cmd[1:]]
    ids = [str(uuid.uuid4()) for _ in range(max(1, a.tasks))]
    job_id, request_id = str(uuid.uuid4()), "drive-" + uuid.uuid4().hex[:12]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
           "STAGELINE_REQUEST_ID": request_id, "STAGELINE_PROTOCOL": str(PROTOCOL)}
    for kv in a.env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            return die(f"--env {kv!r}: want NAME=VALUE")
        env[k] = v
    deadline = time.time() + a.timeout
    sys.stderr.write(f"drive: workdir {workdir}\n")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=workdir,
                            env=env, start_new_session=True)
    frames = queue.Queue()

    def reader():
        try:
            while True:
                f = read_frame(proc.stdout.fileno(), a.max_frame_bytes)
                frames.put(f)
                if f is None:
                    return
        except ProtocolError as e:
            frames.put(e)

    threading.Thread(target=reader, daemon=True).start()
    wlock = threading.Lock()

    def send(frame):
        with wlock:
            try:
                proc.stdin.write(encode_frame(frame, a.max_frame_bytes))
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def show(frame):
        print(json.dumps(frame, default=repr, ensure_ascii=False), flush=True)

    outcome = {}
    problem = None
    hello = None
    pending = set()
    escalation = []  # [(time, signal)]
    cancel_sent = closed = False
    t0 = time.time()
    answered_at = None
    while True:
        now = time.time()
        if hello is not None and pending and not cancel_sent:
            why = None
            if now >= deadline:
                why = "deadline"
            elif a.cancel_after is not None and now - t0 >= a.cancel_after:
                why = "job_cancelled"
            if why:
                cancel_sent = True
                for tid in sorted(pending):
                    send({"t": "cancel", "task_id": tid, "reason": why})
                sys.stderr.write(f"drive: sent cancel ({why})\n")
                escalation = [(now + a.grace, signal.SIGTERM), (now + 2 * a.grace, signal.SIGKILL)]
        if hello is None and now - t0 > 10 and not escalation:
            problem = "no hello within 10 s"
            escalation = [(now, signal.SIGKILL)]
        if answered_at is not None and now - answered_at > a.grace and not escalation:
            problem = "did not exit after answering"
            escalation = [(now, signal.SIGKILL)]
        while escalation and now >= escalation[0][0]:
            sig = escalation.pop(0)[1]
            if proc.poll() is None:
                name = signal.Signals(sig).name
                sys.stderr.write(f"drive: sending {name} to the process group\n")
                signal_group(sig)
        try:
            f = frames.get(timeout=0.05)
        except queue.Empty:
            continue
        if f is None:
            break
        if isinstance(f, ProtocolError):
            problem = f"protocol error: {f}"
            signal_group(signal.SIGKILL)
            break
        show(f)
        persistent = bool(hello and hello.get("persistent"))
        err = check_module_frame(f, persistent)
        if err is None and f["t"] == "hello" and hello is not None:
            err = "a second hello"
        if err is None and f["t"] != "hello":
            if hello is None:
                err = f"a {f['t']} frame before hello"
            else:
                tid = f.get("task_id", None if persistent else ids[0])
                if tid not in pending:
                    err = f"a {f['t']} frame for an unknown task_id {tid!r}"
                elif f["t"] in ("result", "error"):
                    pending.discard(tid)
                    outcome[tid] = f
        if err:
            problem = f"protocol error: {err}"
            signal_group(signal.SIGKILL)
            break
        if f["t"] == "hello":
            hello = f
            if not f.get("persistent") and a.tasks > 1:
                problem = "--tasks > 1 needs a persistent module"
                signal_group(signal.SIGKILL)
                break
            for tid in ids:
                pending.add(tid)
                send({"t": "task", "task_id": tid, "job_id": job_id, "stage": a.stage,
                      "attempt": a.attempt, "params": params, "inputs": inputs,
                      "workdir": workdir, "deadline": int(deadline * 1000),
                      "request_id": request_id})
        if hello is not None and not pending and answered_at is None:
            answered_at = time.time()
            if hello.get("persistent") and not closed:
                closed = True
                send({"t": "shutdown"})
                with wlock:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        status = proc.wait(timeout=max(a.grace, 1.0))
    except subprocess.TimeoutExpired:
        sys.stderr.write("drive: the module did not exit after answering; killing it\n")
        signal_group(signal.SIGKILL)
        status = proc.wait()
        problem = problem or "did not exit after answering"
    if status != 0 and problem is None:
        problem = f"exit status {status}" if status > 0 else \
            f"killed by {signal.Signals(-status).name}"
    if pending and problem is None:
        problem = "exited without answering"
    errors = [f for f in outcome.values() if f["t"] == "error"]
    sys.stderr.write(f"drive: {len(outcome) - len(errors)} result(s), {len(errors)} error(s), "
                     f"module exit {status}" + (f"; PANIC: {problem}" if problem else "") + "\n")
    if problem:
        return 2
    return 1 if errors else 0


def _main(argv):
    if not argv or argv[0] != "drive":
        sys.stderr.write("usage: stageline_module.py drive [options] -- COMMAND [ARGS...]\n"
                         "       stageline_module.py drive --help\n")
        return 2
    return _drive(argv[1:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
