"""The module supervisor (src/exec/module.c) through tests/harness/modrun:
every outcome, the kill escalation, the protocol checks, the limits and the
persistent restart rules, against the real test modules in contrib/modules
(plus a few written here for what those don't do).

MODRUN names the harness binary (the build's tests/harness/modrun); without
it these tests are skipped. NOOP_MODULE may name a built
contrib/modules/noop; otherwise it is compiled here with cc."""

import json
import os
import re
import shutil
import subprocess
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODULES = os.path.join(ROOT, "contrib", "modules")
SDK_PY = os.path.join(ROOT, "contrib", "sdk", "python")
SDK_C = os.path.join(ROOT, "contrib", "sdk", "c")
PY = "/usr/bin/python3"
MODRUN = os.environ.get("MODRUN")

pytestmark = pytest.mark.skipif(not MODRUN,
                                reason="MODRUN (the tests/harness/modrun binary) is not set")

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                     "UndefinedBehaviorSanitizer")
TRUNC_RE = re.compile(r"^\[stage\.log truncated: (\d+) bytes dropped\]$")


class Run:
    def __init__(self, proc):
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
        sums = [l for l in self.lines if l.get("summary")]
        assert len(sums) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        self.summary = sums[0]
        self.events = [l for l in self.lines if not l.get("summary")]
        self.done = sorted((e for e in self.events if e["event"] == "done"),
                           key=lambda e: e["task"])

    def of(self, kind, task=None):
        return [e for e in self.events
                if e["event"] == kind and (task is None or e.get("task") == task)]

    def log_lines(self):
        out = []
        for l in self.stderr.splitlines():
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
        return out


def modrun(module, task=None, tasks=1, args=(), timeout=120, env=None, workdir=None):
    module = dict(module)
    module.setdefault("name", "test")
    task_json = json.dumps(task if task is not None else {})
    if len(task_json) > 64 * 1024:  # past what one argv string may hold
        path = os.path.join(str(workdir), "..", "task.json")
        with open(path, "w") as f:
            f.write(task_json)
        task_json = "@" + path
    cmd = [MODRUN, "--module-json", json.dumps(module), "--task-json", task_json,
           "--tasks", str(tasks), *args]
    if workdir:
        cmd += ["--workdir", str(workdir)]
    e = dict(os.environ)
    # A small quarantine, so an ASan build measures our memory, not ASan's.
    e["ASAN_OPTIONS"] = ":".join(x for x in (e.get("ASAN_OPTIONS", ""),
                                             "quarantine_size_mb=8") if x)
    e.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    for m in SANITIZER_MARKERS:
        assert m not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, f"modrun exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    run = Run(proc)
    s = run.summary
    assert s["done"] == tasks
    # Whatever happened, nothing is left behind.
    assert s["fds_after"] == s["fds_before"], s
    assert s["zombies"] == 0, s
    assert s["children_left"] == 0, s
    return run


def py_module(name, script, **extra):
    return dict({"name": name, "argv": [PY, os.path.join(MODULES, script)]}, **extra)


def write_module(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def noop(tmp_path_factory):
    built = os.environ.get("NOOP_MODULE")
    if built:
        return built
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build contrib/modules/noop.c")
    out = str(tmp_path_factory.mktemp("noop") / "noop")
    subprocess.run([cc, "-O2", "-I", SDK_C, os.path.join(MODULES, "noop.c"), "-o", out,
                    "-lmsgpackc"], check=True, capture_output=True)
    return out


# A persistent Python module (concurrency 4) for the restart rules:
# params.sleep seconds of work (cancellable), params.crash kills the whole
# process with SIGSEGV after params.crash_after seconds, params.ignore_cancel
# never answers (a cancel or anything else).
PCRASH = """\
    import os, signal, sys, time
    sys.path.insert(0, os.environ["SDK_DIR"])
    from stageline_module import Module

    module = Module("pcrash", "1.0", persistent=True, concurrency=4)

    @module.task
    def handle(ctx):
        if ctx.params.get("crash"):
            time.sleep(float(ctx.params.get("crash_after", 0.2)))
            sys.stderr.write("pcrash: crashing\\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(60)  # another thread may take the signal: don't answer meanwhile
        if ctx.params.get("ignore_cancel"):
            while True:
                time.sleep(1)
        end = time.monotonic() + float(ctx.params.get("sleep", 0))
        while time.monotonic() < end:
            ctx.wait(0.01)
            ctx.check_cancelled()
        return {"pid": os.getpid()}

    if __name__ == "__main__":
        module.run()
"""


def pcrash_module(tmp_path, **extra):
    path = write_module(tmp_path, "pcrash.py", PCRASH)
    return dict({"name": "pcrash", "argv": [PY, path], "persistent": True, "concurrency": 4,
                 "env": {"SDK_DIR": SDK_PY}}, **extra)


# --------------------------------------------------------------------------
# One-shot outcomes


def test_result_is_complete(workdir):
    run = modrun(py_module("sleep", "sleep.py"), {"params": {"seconds": 0.2, "tick": 0.05}},
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "complete", d
    assert d["output"] == {"slept": 0.2}
    assert d["exit_code"] == 0 and d["signal"] == 0
    assert d["retryable"] is False
    assert d["cpu_seconds"] > 0 and d["max_rss_bytes"] > 1024 * 1024
    assert d["spawn_to_hello_ms"] > 0 and d["hello_to_done_ms"] >= 200
    (spawn,) = run.of("spawn")
    assert spawn["pid"] == d["pid"]
    progress = run.of("progress")
    assert len(progress) >= 3
    assert progress[-1]["fraction"] == 1.0
    assert run.summary["metrics"]["spawns_total"] == 1
    assert run.summary["metrics"]["panics_total"] == 0


def test_error_input_is_not_retryable(workdir):
    run = modrun(py_module("flaky", "flaky.py"), {"params": {"category": "input"}},
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "error", d
    assert d["category"] == "input" and d["retryable"] is False
    assert d["error_code"] == "FLAKY"
    assert "planned failures" in d["message"]
    assert d["detail"] == {"attempt": 1}
    assert d["exit_code"] == 0


def test_error_module_is_retryable(workdir):
    run = modrun(py_module("flaky", "flaky.py"), {"params": {}}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "error", d
    assert d["category"] == "module" and d["retryable"] is True
    # A log frame came before the error, and counts.
    assert d["frames"].get("log") == 1


def test_crash_is_panic_with_signal(workdir):
    run = modrun(py_module("crash", "crash.py"), {}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic", d
    assert d["signal"] == 11 and d["exit_code"] == -1
    assert d["retryable"] is True
    assert "SIGSEGV" in d["message"]
    assert "raising SIGSEGV" in d["last_stderr"]
    assert run.summary["metrics"]["panics_total"] == 1


def test_exit_without_result_is_panic(tmp_path, workdir):
    path = write_module(tmp_path, "exit3.py", """\
        import os, sys
        sys.path.insert(0, os.environ["SDK_DIR"])
        from stageline_module import Module
        module = Module("exit3", "1.0")

        @module.task
        def handle(ctx):
            os._exit(3)

        module.run()
    """)
    run = modrun({"name": "exit3", "argv": [PY, path], "env": {"SDK_DIR": SDK_PY}}, {},
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic", d
    assert d["exit_code"] == 3 and d["signal"] == 0
    assert d["message"] == "module exited with code 3 without a result"


def test_exit_before_hello_is_panic(workdir):
    run = modrun({"name": "sh", "argv": ["/bin/sh", "-c", "echo bye >&2; exit 4"]}, {},
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic"
    assert d["exit_code"] == 4
    assert d["message"] == "module exited with code 4 before its hello"
    assert d["last_stderr"] == "bye"


def test_spawn_failure_is_panic(workdir):
    run = modrun({"name": "missing", "argv": ["/nonexistent/module"]}, {}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic" and d["retryable"] is True
    assert d["pid"] == 0
    assert "No such file or directory" in d["message"]


def test_no_hello_is_panic_after_hello_timeout(workdir):
    run = modrun({"name": "nohello", "argv": ["/bin/sleep", "30"], "hello_timeout_ms": 300,
                  "kill_grace_ms": 300}, {}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic", d
    assert d["message"] == "no hello within 300ms"
    assert d["signal"] == 15  # sleep obeys SIGTERM
    assert d["spawn_to_hello_ms"] == -1
    assert 0.3 <= run.summary["elapsed_s"] < 3


def test_no_hello_ignoring_sigterm_gets_sigkill(workdir):
    run = modrun(py_module("hang", "hang.py", env={"HANG_BEFORE_HELLO": "1"},
                           hello_timeout_ms=300, kill_grace_ms=300), {}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic"
    assert d["message"] == "no hello within 300ms"
    assert d["signal"] == 9
    # 300 ms to the hello deadline, 300 ms more to SIGKILL; libevent's
    # timers and the harness's clock may each round by a millisecond
    assert 0.59 <= run.summary["elapsed_s"] < 3


def test_deadline_sends_cancel_then_timeout(workdir):
    # sleep.py answers a cancel at once and exits by itself: a clean exit
    # well inside the (long) cancel grace proves the cancel frame arrived.
    run = modrun(py_module("sleep", "sleep.py", cancel_grace_ms=5000),
                 {"params": {"seconds": 10}, "deadline_ms": 300}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "timeout", d
    assert d["retryable"] is True
    assert d["exit_code"] == 0 and d["signal"] == 0
    assert 250 <= d["hello_to_done_ms"] < 3000
    assert run.summary["elapsed_s"] < 4


def test_deadline_escalates_to_sigkill(workdir):
    run = modrun(py_module("hang", "hang.py", cancel_grace_ms=200, kill_grace_ms=200),
                 {"deadline_ms": 300}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "timeout", d
    assert d["signal"] == 9
    assert "cancel (deadline) received and ignored" in d["last_stderr"]
    # deadline + cancel grace + kill grace
    assert d["hello_to_done_ms"] >= 600
    assert run.summary["elapsed_s"] < 5


def test_deadline_while_queued(workdir):
    tasks = [{"params": {"seconds": 1}}, {"params": {"seconds": 1}, "deadline_ms": 200}]
    run = modrun(py_module("sleep", "sleep.py", concurrency=1), tasks, tasks=2,
                 workdir=workdir)
    first, second = run.done
    assert first["outcome"] == "complete"
    assert second["outcome"] == "timeout" and second["pid"] == 0
    assert run.summary["spawns"] == 1


def test_cancel_mid_task(workdir):
    run = modrun(py_module("sleep", "sleep.py"), {"params": {"seconds": 10}},
                 args=["--cancel-after-ms", "300"], workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "cancelled", d
    assert d["retryable"] is False
    assert d["message"] == "job_cancelled"
    assert d["exit_code"] == 0  # it answered the cancel and exited
    assert run.summary["elapsed_s"] < 4


def test_cancel_of_a_process_that_ignores_it(workdir):
    run = modrun(py_module("hang", "hang.py", cancel_grace_ms=200, kill_grace_ms=200), {},
                 args=["--cancel-after-ms", "200"], workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "cancelled"
    assert d["signal"] == 9


def test_detach_kills_without_callbacks(workdir):
    run = modrun(py_module("sleep", "sleep.py", concurrency=3),
                 {"params": {"seconds": 30}}, tasks=3, args=["--detach-after-ms", "300"],
                 workdir=workdir, timeout=60)
    assert run.done == []
    assert len(run.of("detached")) == 3
    assert run.summary["outcomes"] == {"detached": 3}
    # modrun's graceful shutdown waited for the three processes: they were
    # cancelled by the detach and are gone (summary checks in modrun()).
    assert run.summary["spawns"] == 3


def test_free_kills_and_reaps_at_once(tmp_path, workdir):
    # module_runner_free() with live processes (hang ignores SIGTERM and
    # cancel): SIGKILL to every group and reaped before it returns; no
    # callback. Both a one-shot and a persistent runner.
    run = modrun(py_module("hang", "hang.py", concurrency=3), {}, tasks=3,
                 args=["--detach-after-ms", "300", "--no-shutdown", "--parallel", "3"],
                 workdir=workdir)
    assert run.summary["outcomes"] == {"detached": 3} and run.summary["spawns"] == 3
    assert run.summary["elapsed_s"] < 3
    run = modrun(pcrash_module(tmp_path), {"params": {"ignore_cancel": True}}, tasks=3,
                 args=["--detach-after-ms", "300", "--no-shutdown", "--parallel", "3"],
                 workdir=workdir)
    assert run.summary["outcomes"] == {"detached": 3} and run.summary["spawns"] == 1


def test_environment_is_clean(tmp_path, workdir):
    path = write_module(tmp_path, "envprobe.py", """\
        import os, struct, sys, msgpack
        def send(obj):
            b = msgpack.packb(obj, use_bin_type=True)
            os.write(1, struct.pack(">I", len(b)) + b)
        def recv():
            def exact(n):
                data = b""
                while len(data) < n:
                    chunk = os.read(0, n - len(data))
                    if not chunk:
                        sys.exit(5)
                    data += chunk
                return data
            (n,) = struct.unpack(">I", exact(4))
            return msgpack.unpackb(exact(n), raw=False)
        fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
        send({"t": "hello", "protocol": 1, "module": "envprobe", "version": "1"})
        task = recv()
        send({"t": "result", "output": {
            "env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(),
            "pgid": os.getpgid(0), "fds": fds, "task": {k: task[k] for k in
            ("task_id", "job_id", "stage", "attempt", "workdir", "deadline", "request_id",
             "params")}}})
    """)
    task = {"params": {"x": [1, 2]}, "job_id": "job-1", "stage": "probe", "attempt": 2,
            "request_id": "req-9", "deadline_ms": 60000}
    run = modrun({"name": "envprobe", "argv": ["python3", path],
                  "env": {"MY_SETTING": "on", "STAGELINE_TASK_ID": "forged"}},
                 task, workdir=workdir, env={"STAGELINE_DATABASE_URL": "postgres://secret",
                                             "SECRET_TOKEN": "hunter2"})
    (d,) = run.done
    assert d["outcome"] == "complete", d
    out = d["output"]
    env = out["env"]
    tid = d["task_id"]
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir),
        "MY_SETTING": "on", "STAGELINE_JOB_ID": "job-1", "STAGELINE_TASK_ID": tid,
        "STAGELINE_STAGE": "probe", "STAGELINE_ATTEMPT": "2",
        "STAGELINE_WORKDIR": str(workdir), "STAGELINE_REQUEST_ID": "req-9",
        "STAGELINE_PROTOCOL": "1",
    }, env
    assert out["cwd"] == str(workdir)
    assert out["pgid"] == out["pid"] == d["pid"]
    assert out["fds"][:3] == [0, 1, 2] and len(out["fds"]) <= 4, out["fds"]  # + listdir's own
    t = out["task"]
    assert t["task_id"] == tid and t["job_id"] == "job-1" and t["stage"] == "probe"
    assert t["attempt"] == 2 and t["workdir"] == str(workdir) and t["request_id"] == "req-9"
    assert t["params"] == {"x": [1, 2]} and t["deadline"] > 0


# --------------------------------------------------------------------------
# Protocol violations

BAD_FRAMES = {
    "oversize": r"^frame of 1048577 bytes exceeds the 1048576-byte limit$",
    "not_map": r"^frame is not a map",
    "no_t": r"^frame has no 't' key$",
    "unknown_t": r"^unknown frame type 'bogus'$",
    "garbage": r"^frame is not a map \(got an invalid byte\)$",
    "truncated": r"^stdout closed inside a frame \(\d+ bytes pending\)$",
    "stray_text": r"exceeds the 1048576-byte limit \(stdout holds text, not frames: \"",
    "bad_type": r"^progress\.fraction: expected a number, got str$",
    "bin_in_json": r"^result\.output\.blob: bin data is not allowed in JSON data$",
    "second_hello": r"^second hello frame$",
    "unknown_task_id":
        r"^progress frame for task_id 00000000-0000-0000-0000-000000000000; the task is ",
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_bad_frames_are_panics(kind, workdir):
    # The module lingers 30 s after its bad frame, so a quick end shows the
    # group was killed at once; a truncated frame is only an error at EOF,
    # which comes when the module exits, so that one does not linger.
    linger = 0 if kind == "truncated" else 30
    run = modrun(py_module("badframes", "badframes.py", max_frame_bytes=1048576),
                 {"params": {"kind": kind, "max_frame_bytes": 1048576, "linger": linger}},
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic", d
    assert d["retryable"] is True
    assert re.search(BAD_FRAMES[kind], d["message"]), d["message"]
    assert run.summary["elapsed_s"] < 10
    if kind != "truncated":
        assert d["signal"] == 9
    warns = [l for l in run.log_lines() if l.get("event") == "module.protocol_violation"]
    assert len(warns) == 1 and warns[0]["level"] == "warn"
    assert warns[0]["pid"] == d["pid"] and warns[0]["module"] == "badframes"


# --------------------------------------------------------------------------
# Limits


def test_flood_is_capped_and_memory_bounded(workdir):
    run = modrun(py_module("flood", "flood.py"),
                 {"params": {"stdout_mb": 50, "stderr_mb": 50}}, args=["--events", "done"],
                 workdir=workdir, timeout=300)
    (d,) = run.done
    assert d["outcome"] == "complete", d
    assert d["output"]["stdout_bytes"] >= 50 * 2**20
    assert d["output"]["stderr_bytes"] == 50 * 2**20
    # 8 MiB of stderr and log text reached the stage log, then the marker.
    delivered = d["stderr_bytes"] + d["log_message_bytes"]
    m = TRUNC_RE.match(d["last_stderr"])
    assert m, d["last_stderr"]
    marker_len = len(d["last_stderr"])
    assert 8 * 2**20 - 64 * 1024 <= delivered - marker_len <= 8 * 2**20
    assert int(m.group(1)) == d["log_bytes_dropped"] > 80 * 2**20
    # Progress frames are not capped: all of them arrived.
    assert d["frames"]["progress"] == d["output"]["progress_frames"]
    growth_mb = (run.summary["maxrss_kb"] - run.summary["rss_start_kb"]) / 1024
    # Bounded means independent of how much the module writes: three times
    # the flood must not cost more memory (a sanitizer build has its own
    # allocator overhead, so compare, don't trust an absolute figure).
    big = modrun(py_module("flood", "flood.py"),
                 {"params": {"stdout_mb": 150, "stderr_mb": 150}}, args=["--events", "done"],
                 workdir=workdir, timeout=300)
    assert big.done[0]["outcome"] == "complete", big.done[0]
    big_mb = (big.summary["maxrss_kb"] - big.summary["rss_start_kb"]) / 1024
    assert big_mb < growth_mb + 64, (growth_mb, big_mb, big.summary)


# --------------------------------------------------------------------------
# Persistent modules


def test_persistent_noop_200_tasks_one_process(noop):
    run = modrun({"name": "noop", "argv": [noop], "persistent": True, "concurrency": 64},
                 {"params": {"i": 1}}, tasks=200, args=["--events", "done"])
    assert [d["outcome"] for d in run.done] == ["complete"] * 200
    assert {d["output"]["ok"] for d in run.done} == {True}
    assert len({d["pid"] for d in run.done}) == 1
    assert run.summary["spawns"] == 1 and run.summary["restarts"] == 0
    assert run.summary["metrics"]["spawns_total"] == 1


def test_persistent_hello_must_say_persistent(workdir):
    run = modrun(py_module("sleep", "sleep.py", persistent=True),
                 {"params": {"seconds": 0}, "deadline_ms": 3000}, workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "panic", d
    assert "configured persistent but its hello lacks persistent: true" in d["message"]


def test_persistent_crash_ends_only_in_flight_tasks(tmp_path, workdir):
    # Tasks 0-3 run first; 4-7 start when they end, and 5 crashes 50 ms
    # into its run, well before 4, 6 and 7 (600 ms) could finish.
    tasks = [{"params": {"sleep": 0.6}} for _ in range(24)]
    tasks[5] = {"params": {"crash": True, "crash_after": 0.05}}
    run = modrun(pcrash_module(tmp_path), tasks, tasks=24, args=["--parallel", "8"],
                 workdir=workdir)
    by_outcome = {}
    for d in run.done:
        by_outcome.setdefault(d["outcome"], []).append(d)
    crash = run.done[5]
    assert crash["outcome"] == "panic" and crash["signal"] == 11, crash
    panics = by_outcome["panic"]
    # Only the tasks the process had in flight (at most its concurrency).
    assert 1 <= len(panics) <= 4
    assert all(p["retryable"] and p["pid"] == crash["pid"] for p in panics)
    assert len(by_outcome["complete"]) == 24 - len(panics)
    # Tasks started after the crash ran on the restarted process.
    later = [d for d in run.done if d["task"] > 12]
    assert later and all(d["outcome"] == "complete" and d["pid"] != crash["pid"]
                         for d in later)
    assert run.summary["spawns"] == 2 and run.summary["restarts"] == 1
    assert run.summary["metrics"]["restarts_total"] == 1
    assert run.summary["metrics"]["panics_total"] == 1
    # A shared process's stderr belongs to no task: it went to the runner's hook.
    lines = [e for e in run.of("stderr") if e["line"] == "pcrash: crashing"]
    assert len(lines) == 1 and lines[0]["task"] is None and lines[0]["pid"] == crash["pid"]


def test_persistent_unanswered_cancel_restarts(tmp_path, workdir):
    tasks = [{"params": {"sleep": 2}} for _ in range(8)]
    tasks[1] = {"params": {"ignore_cancel": True}, "deadline_ms": 300}
    run = modrun(pcrash_module(tmp_path, cancel_grace_ms=300, kill_grace_ms=300), tasks,
                 tasks=8, args=["--parallel", "8", "--events", "done"], workdir=workdir)
    stuck = run.done[1]
    assert stuck["outcome"] == "timeout", stuck
    first_pid = stuck["pid"]
    on_first = [d for d in run.done if d["pid"] == first_pid and d["task"] != 1]
    assert len(on_first) == 3  # concurrency 4: three others were in flight
    for d in on_first:
        assert d["outcome"] == "panic" and d["retryable"], d
        assert "did not answer its cancel within 300ms" in d["message"]
    rest = [d for d in run.done if d["pid"] != first_pid]
    assert len(rest) == 4 and all(d["outcome"] == "complete" for d in rest)
    assert run.summary["restarts"] == 1
    warns = [l for l in run.log_lines() if l.get("event") == "module.cancel_unanswered"]
    assert len(warns) == 1


def test_persistent_cancel_answered(tmp_path, workdir):
    run = modrun(pcrash_module(tmp_path), {"params": {"sleep": 10}}, tasks=2,
                 args=["--parallel", "2", "--cancel-after-ms", "300"], workdir=workdir)
    assert [d["outcome"] for d in run.done] == ["cancelled", "cancelled"]
    assert run.done[0]["pid"] == run.done[1]["pid"]
    assert run.summary["spawns"] == 1 and run.summary["restarts"] == 0


def test_shutdown_cancels_running_and_queued_tasks(tmp_path, workdir):
    # concurrency 4, 6 tasks submitted: 4 run, 2 wait; shutdown at 300 ms
    # with a 200 ms grace: the queued two end at once, the running four get
    # a cancel (reason shutdown) after the grace and answer it.
    run = modrun(pcrash_module(tmp_path), {"params": {"sleep": 30}}, tasks=6,
                 args=["--parallel", "6", "--shutdown-after-ms", "300",
                       "--shutdown-grace-ms", "200"], workdir=workdir)
    assert [d["outcome"] for d in run.done] == ["cancelled"] * 6
    assert all(d["message"] == "shutdown" for d in run.done)
    ran = [d for d in run.done if d["pid"]]
    assert len(ran) == 4 and len({d["pid"] for d in ran}) == 1
    assert all(d["queued_ms"] == -1 for d in run.done if not d["pid"])
    assert run.summary["spawns"] == 1 and run.summary["restarts"] == 0
    assert run.summary["elapsed_s"] < 5


def test_shutdown_oneshot_escalates(workdir):
    run = modrun(py_module("hang", "hang.py", cancel_grace_ms=200, kill_grace_ms=200), {},
                 args=["--shutdown-after-ms", "200", "--shutdown-grace-ms", "100"],
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "cancelled" and d["message"] == "shutdown"
    assert d["signal"] == 9


def test_large_task_and_result_frames(tmp_path, workdir):
    # A 4 MiB task frame (stdin writes go in pieces) and a 3 MiB result
    # frame (larger than the 1 MiB read buffer cap, so it must fit whole).
    path = write_module(tmp_path, "echo.py", """\
        import os, sys
        sys.path.insert(0, os.environ["SDK_DIR"])
        from stageline_module import Module
        module = Module("echo", "1.0")

        @module.task
        def handle(ctx):
            return {"got": len(ctx.params["blob"]), "blob": "y" * (3 << 20)}

        module.run()
    """)
    run = modrun({"name": "echo", "argv": [PY, path], "env": {"SDK_DIR": SDK_PY}},
                 {"params": {"blob": "x" * (4 << 20)}}, args=["--events", "done"],
                 workdir=workdir)
    (d,) = run.done
    assert d["outcome"] == "complete", d["message"]
    assert d["output"]["got"] == 4 << 20
    assert len(d["output"]["blob"]) == 3 << 20


# --------------------------------------------------------------------------
# Leaks


def test_thousand_oneshot_tasks_leave_nothing(noop, workdir):
    # noop in one-shot mode: stdin closes after its answer, so it exits.
    run = modrun({"name": "noop1", "argv": [noop], "concurrency": 16}, {}, tasks=1000,
                 args=["--events", "done"], workdir=workdir, timeout=300)
    assert [d["outcome"] for d in run.done] == ["complete"] * 1000
    assert len({d["pid"] for d in run.done}) == 1000
    assert run.summary["spawns"] == 1000
    # fds, zombies and children are checked by modrun() for every run.
