"""The `stageline` CLI's job commands (submit, status, list, watch, cancel,
retry, attempts, logs, pipelines) against a real stagelined over HTTP.

Every test gets a database of its own and a daemon started the way
test_engine.py starts them (config written as JSON, the scheduler on with
short timers, the conftest post-mortem on the daemon's log). The CLI is the
built binary (STAGELINE_CLI), run with STAGELINE_URL pointing at the daemon
and every other STAGELINE_* variable removed. What the tests read: the
CLI's stdout, stderr and exit status, and the API itself (GET /v1/jobs/{id})
to check what the CLI did or to wait for a state. The TTY mode of `watch`
runs under a pseudo-terminal (os.openpty)."""

import fcntl
import hashlib
import json
import os
import queue
import re
import select
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest

from conftest import Daemon, clean_env
from slhelpers import UUID_RE, free_port, wait_for

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY = "/usr/bin/python3"
TERMINAL = ("completed", "failed", "cancelled")
FAST = {"enabled": True, "lease": "3s", "heartbeat": "1s", "rescue_every": "1s", "poll": "1s",
        "max_concurrency": 16}
SANITIZER = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="session")
def cli_path():
    path = os.environ.get("STAGELINE_CLI")
    if not path:
        pytest.skip("STAGELINE_CLI is not set (make check sets it to the built `stageline`)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"STAGELINE_CLI={path} is not an executable file")
    return path


@pytest.fixture
def dbname(pg, request):
    """A database of the test's own, so no other test's jobs are claimed."""
    name = "cli_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50].strip("_")
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name}")
    return name


def module_def(name):
    if name == "noop":
        path = os.environ.get("NOOP_MODULE")
        if not path:
            pytest.skip("NOOP_MODULE is not set (make check sets it to the built noop module)")
        return {"command": [path], "persistent": True, "concurrency": 256}
    rel = {
        "sleep": "contrib/modules/sleep.py",
        "flaky": "contrib/modules/flaky.py",
        "echo": "tests/integration/modules/echo.py",
    }[name]
    return {"command": [PY, os.path.join(REPO, rel)], "concurrency": 4}


PIPES = {
    "quick": {"description": "Two quick stages", "stages": [
        {"name": "first", "module": "noop"},
        {"name": "second", "module": "echo", "needs": ["first"]},
    ]},
    "slow": {"stages": [
        {"name": "prep", "module": "noop"},
        {"name": "nap", "module": "sleep", "needs": ["prep"],
         "params": {"seconds": 1.5, "tick": 0.05}},
    ]},
    "long": {"stages": [{"name": "nap", "module": "sleep", "params": {"seconds": 60}}]},
    "flaky": {"stages": [
        {"name": "f", "module": "flaky", "retries": 3, "backoff": "50ms",
         "params": {"failures": 2}},
    ]},
    "broken": {"stages": [
        {"name": "ok", "module": "noop"},
        {"name": "bad", "module": "flaky", "needs": ["ok"], "params": {"failures": 5}},
    ]},
    # a module that logs (flaky, twice) between two that take their time
    "chatty": {"stages": [
        {"name": "nap", "module": "sleep", "params": {"seconds": 1.0, "tick": 0.1}},
        {"name": "talk", "module": "flaky", "needs": ["nap"], "retries": 3, "backoff": "50ms",
         "params": {"failures": 2}},
        {"name": "rest", "module": "sleep", "needs": ["talk"], "params": {"seconds": 1.5}},
    ]},
    "held": {"stages": [
        {"name": "nap", "module": "sleep", "params": {"seconds": 60}},
        {"name": "after", "module": "noop", "needs": ["nap"]},
    ]},
    "files": {"stages": [
        {"name": "make", "module": "echo", "params": {"artifact": "note"}},
        {"name": "use", "module": "echo", "needs": ["make"]},
    ]},
    "typed": {"description": "Declared params",
              "params": {"n": {"type": "integer", "required": True},
                         "label": {"type": "string", "default": "none"}},
              "stages": [{"name": "only", "module": "echo"}]},
}

ERR_FAIL = [r'"event":"job\.lifecycle\.fail"', r'"event":"job\.module\.(error|panic|timeout)"']


def start(factory, pg, dbname, pipelines=PIPES, auth=False):
    """A stagelined on the test's database with these pipelines; waits until
    it is ready and its scheduler runs (and, without auth, until the
    default project exists)."""
    name = f"cli-{len(factory.daemons)}"
    port = free_port()
    tree = factory.base_config(port)
    tree["database"]["url"] = pg.url(dbname=dbname)
    tree["server"]["shutdown_grace"] = "3s"
    tree["auth"] = {"enabled": auth}
    used = {s["module"] for p in pipelines.values() for s in p["stages"]}
    tree["modules"] = {m: module_def(m) for m in sorted(used)}
    tree["pipelines"] = pipelines
    tree["scheduler"] = dict(FAST)
    tree["store"] = {"url_secret": "cli-test-url-secret-0123456789abcdef"}
    raw = "# written by tests/integration/test_cli_jobs.py (JSON is YAML)\n" + json.dumps(tree)
    cfg_path, _ = factory.write_config(raw=raw, name=name, port=port)
    argv = [factory.binary, "-c", cfg_path, "--log-format", "json"]
    d = Daemon(factory, name, cfg_path, argv, clean_env(), port, ERR_FAIL, False)
    factory.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_ready(timeout=20.0)
    if not auth:
        _wait_default_project(pg, dbname)
    d.wait_log(lambda l: l["event"] == "sched.start", timeout=10.0, what="sched.start")
    return d


def _wait_default_project(pg, dbname):
    def there():
        r = subprocess.run(["psql", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d",
                            dbname, "-XAtc", "SELECT 1 FROM projects WHERE id = 'default'"],
                           capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and r.stdout.strip() == "1"

    wait_for(there, 10.0, 0.05, "the default project row")


class Cli:
    def __init__(self, path, url, cwd):
        self.path = path
        self.url = url
        self.cwd = str(cwd)

    def env(self, extra=None):
        env = clean_env(extra)
        if self.url is not None:
            env["STAGELINE_URL"] = self.url
        env.pop("NO_COLOR", None)
        return env

    def run(self, *args, env=None, timeout=60, stdin=None):
        r = subprocess.run([self.path, *args], capture_output=True, text=True,
                           env=self.env(env), timeout=timeout, cwd=self.cwd, input=stdin)
        for marker in SANITIZER:
            assert marker not in r.stderr, r.stderr
        return r

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def submit(self, *args, **kw):
        r = self.ok("submit", *args, **kw)
        jid = r.stdout.strip()
        assert UUID_RE.match(jid), r.stdout
        return jid


def get_job(d, jid):
    st, _, b = d.http("GET", f"/v1/jobs/{jid}", timeout=10.0)
    assert st == 200, (st, b[:300])
    return json.loads(b)


def wait_job(d, jid, statuses=TERMINAL, timeout=30.0):
    def there():
        j = get_job(d, jid)
        if j["status"] in statuses and not any(s["status"] == "running" for s in j["stages"]):
            return j
        return None

    return wait_for(there, timeout, 0.05, f"job {jid} in {statuses}")


def stage(job, name):
    return next(s for s in job["stages"] if s["stage"] == name)


def one_line_error(r):
    """The CLI's error lines (stderr), each starting with 'stageline: '."""
    lines = r.stderr.strip().splitlines()
    assert lines, r
    for ln in lines:
        assert ln.startswith("stageline: "), r.stderr
    return lines


@pytest.fixture
def env(daemon, pg, dbname, cli_path, tmp_path):
    """A daemon with PIPES (auth off) and a Cli pointed at it."""
    d = start(daemon, pg, dbname)
    return d, Cli(cli_path, d.base_url, tmp_path)


# --------------------------------------------------------------------------
# pipelines, submit, status


def test_pipelines_lists_names_descriptions_and_stages(env):
    d, cli = env
    r = cli.ok("pipelines")
    out = r.stdout
    assert "quick: Two quick stages" in out, out
    assert "typed: Declared params" in out, out
    assert re.search(r"params: n \(integer, required\), label \(string, default \"none\"\)",
                     out), out
    # the stages table of `quick`: number, name, module, needs
    assert re.search(r"^\s+1\s+first\s+noop\s+-$", out, re.M), out
    assert re.search(r"^\s+2\s+second\s+echo\s+first$", out, re.M), out
    for name in PIPES:
        assert re.search(rf"^{name}(:|$)", out, re.M), (name, out)
    # --json is the API's answer
    doc = json.loads(cli.ok("pipelines", "--json").stdout)
    st, _, b = d.http("GET", "/v1/pipelines")
    assert st == 200 and doc == json.loads(b)
    # the global --json works too
    assert json.loads(cli.ok("--json", "pipelines").stdout) == doc


def test_submit_params_and_input_file(env, tmp_path):
    d, cli = env
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"from_file": 1, "n": 7, "s": "file"}))
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps({"text": "hello", "list": [1, 2]}))
    jid = cli.submit("quick", "--params-file", str(params_file), "--input-file", str(input_file),
                     "--param", "n=42", "--param", "flag=true", "--param", "name=hello world",
                     "--param", 'obj={"a": [1, null]}', "--param", 'quoted="007"',
                     "--param", "ratio=0.5", "--param", "empty=", "--param", "eq=a=b")
    job = wait_job(d, jid)
    assert job["status"] == "completed", job
    assert job["params"] == {"from_file": 1, "n": 42, "s": "file", "flag": True,
                             "name": "hello world", "obj": {"a": [1, None]}, "quoted": "007",
                             "ratio": 0.5, "empty": "", "eq": "a=b"}, job["params"]
    # the job's input reached the stage: echo answers with what it was given
    out = json.loads((tmp_path / "var" / "objects" / "default" / jid / "02_second" /
                      "output.json").read_text())
    assert out["inputs"]["input.json"] == {"text": "hello", "list": [1, 2]}, out

    # --input inline, --json prints the created job
    r = cli.ok("submit", "quick", "--input", '{"x": 1}', "--json")
    created = json.loads(r.stdout)
    assert UUID_RE.match(created["id"]) and created["status"] == "queued", created
    assert created["pipeline"] == "quick" and len(created["stages"]) == 2, created
    wait_job(d, created["id"])
    out = json.loads((tmp_path / "var" / "objects" / "default" / created["id"] / "02_second" /
                      "output.json").read_text())
    assert out["inputs"]["input.json"] == {"x": 1}, out

    # params from stdin
    jid = cli.submit("typed", "--params-file", "-", stdin='{"n": 3}')
    assert get_job(d, jid)["params"] == {"n": 3, "label": "none"}


def test_submit_resume_from_with_the_same_input(env, tmp_path):
    d, cli = env
    # 1e300 too: jsonb writes it back as 301 digits, which the scheduler must
    # still read as the number it was (src/db/pgjson.c)
    jid = cli.submit("quick", "--input", '{"text": "again", "big": 1e300}')
    assert wait_job(d, jid)["status"] == "completed"
    again = cli.submit("quick", "--resume-from", f"{jid}:second", "--same-input")
    job = wait_job(d, again)
    assert job["status"] == "completed", job
    assert [s["skip_reason"] for s in job["stages"]] == ["reused", None], job["stages"]
    for j in (jid, again):
        out = json.loads((tmp_path / "var" / "objects" / "default" / j / "02_second" /
                          "output.json").read_text())
        assert out["inputs"]["input.json"] == {"text": "again", "big": 1e300}, (j, out)
    # an earlier job that is not there: the CLI says so and submits nothing
    before = len(json.loads(cli.ok("list", "--json", "--limit", "200").stdout)["data"])
    r = cli.run("submit", "quick", "--resume-from",
                "0190b5a0-0000-7000-8000-000000000000:second", "--same-input")
    assert r.returncode == 1 and "no such job" in r.stderr, r
    assert len(json.loads(cli.ok("list", "--json", "--limit", "200").stdout)["data"]) == before


def test_submit_idempotency_key(env):
    d, cli = env
    a = cli.submit("quick", "--idempotency-key", "order-4711")
    r = cli.ok("submit", "quick", "--idempotency-key", "order-4711")
    assert r.stdout.strip() == a, r
    assert "idempotency key" in r.stderr, r.stderr
    wait_job(d, a)


def test_submit_validation_problem_lists_each_field(env):
    _, cli = env
    r = cli.run("submit", "typed", "--param", "n=not-a-number", "--param", "extra=1")
    assert r.returncode == 1, r
    lines = one_line_error(r)
    assert lines[0] == "stageline: Invalid request: the request has invalid fields", lines
    assert any(re.match(r"stageline:   params\.n: ", ln) for ln in lines[1:]), lines
    assert any(re.match(r"stageline:   params\.extra: ", ln) for ln in lines[1:]), lines
    assert r.stdout == ""
    r = cli.run("submit", "no-such-pipeline")
    assert r.returncode == 1 and "pipeline: no such pipeline" in r.stderr, r


def test_status_shows_the_job_line_and_stages_table(env):
    d, cli = env
    jid = cli.submit("broken")
    job = wait_job(d, jid)
    assert job["status"] == "failed", job
    r = cli.run("status", jid)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"job {jid} (pipeline broken): failed, 100%, "), lines
    assert lines[1].startswith("error: FLAKY (module): attempt 1 of 5 planned failures"), lines
    head = next(i for i, ln in enumerate(lines) if ln.startswith("#"))
    assert re.split(r"\s{2,}", lines[head]) == ["#", "STAGE", "STATUS", "ATTEMPT", "WAIT", "RUN",
                                                "ERROR / SKIP REASON"], lines[head]
    rows = [re.split(r"\s{2,}", ln) for ln in lines[head + 1:]]
    assert [r_[:4] for r_ in rows] == [["1", "ok", "completed", "1"],
                                      ["2", "bad", "failed", "1"]], rows
    assert rows[1][6] == "FLAKY (module): attempt 1 of 5 planned failures", rows
    for row in rows:
        assert re.match(r"^\d+ms$|^\d+\.\d\ds$", row[4]) and re.match(r"^\d+ms$|^\d+\.\d\ds$",
                                                                       row[5]), row
    # --json is the job
    doc = json.loads(cli.ok("status", jid, "--json").stdout)
    assert doc["id"] == jid and doc["status"] == "failed" and len(doc["stages"]) == 2


# --------------------------------------------------------------------------
# list


def test_list_filters_pages_and_json(env):
    d, cli = env
    ids = [cli.submit("quick") for _ in range(3)]
    bad = cli.submit("broken")
    for j in ids + [bad]:
        wait_job(d, j)
    r = cli.ok("list")
    lines = r.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "PIPELINE", "STATUS", "PROGRESS", "CREATED"]
    rows = [re.split(r"\s{2,}", ln) for ln in lines[1:]]
    assert [row[0] for row in rows] == [bad] + ids[::-1], rows  # newest first
    assert rows[0][1:4] == ["broken", "failed", "100%"], rows
    assert all(row[1:4] == ["quick", "completed", "100%"] for row in rows[1:]), rows
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", row[4]) for row in rows), rows

    r = cli.ok("list", "--status", "completed", "--pipeline", "quick")
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ids[::-1], r.stdout
    r = cli.ok("list", "--status", "failed")
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == [bad], r.stdout

    # one page, and a note that there are more; --all follows next_cursor
    r = cli.ok("list", "--limit", "1")
    assert len(r.stdout.splitlines()) == 2 and "--all" in r.stderr, r
    r = cli.ok("list", "--limit", "1", "--all")
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == [bad] + ids[::-1], r.stdout
    assert r.stderr == ""

    page = json.loads(cli.ok("list", "--limit", "2", "--json").stdout)
    assert [j["id"] for j in page["data"]] == [bad, ids[2]] and page["next_cursor"], page
    every = json.loads(cli.ok("list", "--limit", "2", "--all", "--json").stdout)
    assert [j["id"] for j in every["data"]] == [bad] + ids[::-1], every
    assert every["next_cursor"] is None

    r = cli.run("list", "--status", "sleeping")
    assert r.returncode == 1 and "stageline:   status: " in r.stderr, r


# --------------------------------------------------------------------------
# watch


def test_watch_piped_prints_a_line_per_change_and_exits_0(env):
    d, cli = env
    jid = cli.submit("slow")
    r = cli.run("watch", jid, "--interval", "0.05")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    change = re.compile(r"^\[\s*(\d+\.\d\d)s\] (\S+)\s+(\S+)(?: (\d+)%)?")
    events = [change.match(ln) for ln in lines]
    events = [m for m in events if m]
    assert events, r.stdout
    seen = [(m.group(2), m.group(3)) for m in events]
    assert ("nap", "running") in seen and ("nap", "completed") in seen, seen
    assert ("prep", "completed") in seen, seen
    # progress shows while it runs, at least one step past 0%
    pcts = [int(m.group(4)) for m in events if m.group(2) == "nap" and m.group(4)]
    assert any(p >= 25 for p in pcts), (pcts, r.stdout)
    times = [float(m.group(1)) for m in events]
    assert times == sorted(times), times
    # no line twice for the same state
    assert len(set(lines[:len(events)])) == len(events)
    # then the final state: the job line and the stages table
    assert any(ln.startswith(f"job {jid} (pipeline slow): completed, 100%") for ln in lines), lines
    assert any(re.match(r"^2\s+nap\s+completed\s+1\s", ln) for ln in lines), lines
    assert "\x1b[" not in r.stdout
    # it followed the job's event stream, and read the job once at the end: no polling
    gets = d.find_log(lambda l: l["event"] == "http.access" and l.get("method") == "GET")
    streams = [l for l in gets if l.get("route") == "/v1/jobs/{id}/events"]
    assert [l["status"] for l in streams] == [200], streams
    polls = [l for l in gets if l.get("route") == "/v1/jobs/{id}"]
    assert [l["status"] for l in polls] == [200], polls
    # a settled job: one line per stage, at once
    r = cli.run("watch", jid)
    assert r.returncode == 0 and r.stdout.count("completed") >= 3, r


def test_watch_failed_job_exits_1(env):
    d, cli = env
    jid = cli.submit("broken")
    r = cli.run("watch", jid, "--interval", "0.05")
    assert r.returncode == 1, r
    assert re.search(r"^\[\s*\d+\.\d\ds\] bad\s+failed: FLAKY \(module\): attempt 1 of 5", r.stdout,
                     re.M), r.stdout
    assert f"job {jid} (pipeline broken): failed" in r.stdout
    assert r.stderr == ""


def test_submit_wait_follows_and_exits_with_the_outcome(env):
    d, cli = env
    r = cli.run("submit", "quick", "--wait", "--interval", "0.05")
    assert r.returncode == 0, r
    jid = r.stdout.splitlines()[0]
    assert UUID_RE.match(jid), r.stdout
    assert f"job {jid} (pipeline quick): completed" in r.stdout
    r = cli.run("submit", "broken", "--wait")
    assert r.returncode == 1 and "failed" in r.stdout, r
    # --json --wait: JSON lines, the created job first, the settled one last
    r = cli.run("submit", "quick", "--wait", "--json")
    assert r.returncode == 0, r
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert docs[0]["status"] == "queued" and docs[-1]["status"] == "completed", docs
    assert len({doc["id"] for doc in docs}) == 1


def run_in_pty(argv, env, cwd, timeout=60.0, cols=100):
    """Runs argv with stdout on a pseudo-terminal; returns (exit code,
    everything it drew, stderr)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                         env=env, cwd=cwd)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if not r:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not chunk:
                break
            out += chunk
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    err = p.stderr.read().decode()
    p.stderr.close()
    return rc, out.decode("utf-8", "replace"), err


def test_watch_on_a_terminal_draws_progress_bars_in_place(env):
    d, cli = env
    jid = cli.submit("slow")
    t0 = time.monotonic()
    rc, out, err = run_in_pty([cli.path, "watch", jid, "--interval", "0.02"], cli.env(), cli.cwd)
    elapsed = time.monotonic() - t0
    assert rc == 0, (rc, out, err)
    assert err == ""
    frames = out.split("\x1b[J")
    draws = len(frames) - 1
    assert draws >= 2, out
    # redrawn in place: the cursor goes back up over the previous drawing (header + 2 stages)
    assert "\x1b[3A" in out, out
    # at most ~5 redraws a second, however often it polls
    assert draws <= 5 * elapsed + 3, (draws, elapsed)
    # progress bars, with a partly filled one while nap ran
    assert re.search(r"nap\s+\[[^\]]*#+-+[^\]]*\]\s+\d+%\s+running", _plain(out)), _plain(out)
    # it ends with the final state, then the job line
    final = _plain(frames[-2])
    assert re.search(r"nap\s+\[#{20}\]\s+100%\s+completed", final), final
    assert re.search(r"prep\s+\[#{20}\]\s+100%\s+completed", final), final
    assert f"job {jid} (pipeline slow): completed, 100%" in _plain(frames[-1]), frames[-1]
    # no line wider than the terminal (they would wrap and break the redraw)
    for ln in _plain(out).split("\r\n"):
        assert len(ln) < 100, ln


def _plain(s):
    """Terminal output without the escape sequences."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", s)


def test_watch_json_prints_revisions_as_lines(env):
    d, cli = env
    jid = cli.submit("slow")
    r = cli.run("watch", jid, "--json", "--interval", "0.05")
    assert r.returncode == 0, r
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(docs) >= 2 and docs[-1]["status"] == "completed", docs
    assert all(doc["id"] == jid for doc in docs)


def test_watch_resumes_the_stream_across_a_daemon_restart(daemon, pg, dbname, cli_path,
                                                           tmp_path):
    """The daemon goes away in the middle of a stage (SIGTERM: its streams
    end, the running attempt goes back to ready) and comes back: `watch`
    reconnects with Last-Event-ID and follows the job to its end."""
    pipes = {"nap": {"stages": [{"name": "nap", "module": "sleep",
                                 "params": {"seconds": 6, "tick": 0.05}}]}}
    d = start(daemon, pg, dbname, pipes)
    cli = Cli(cli_path, d.base_url, tmp_path)
    jid = cli.submit("nap")
    p = subprocess.Popen([cli.path, "watch", jid, "--interval", "0.05"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=cli.env(), cwd=cli.cwd)
    try:
        # the log, not GET /v1/jobs/{id}, says when: the access log then counts only the CLI's
        d.wait_log(lambda l: l["event"] == "job.module.spawn" and l.get("job_id") == jid,
                   timeout=20.0, what="nap to start")
        d.wait_log(lambda l: l["event"] == "http.access"
                   and l.get("route") == "/v1/jobs/{id}/events", timeout=10.0,
                   what="the CLI's event stream")
        # the CLI has had live events from the first stream: it shows the stage
        # running (its stdout, read as it comes)
        seen = []
        reader = threading.Thread(target=lambda: seen.extend(iter(p.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        wait_for(lambda: any(re.search(r"nap\s+running", ln) for ln in seen), 20.0, 0.02,
                 "watch to show nap running")
        assert d.stop() == 0
        d.start(wait_healthy=True)
        d.wait_ready(timeout=20.0)
        err = p.stderr.read()
        p.wait(timeout=90)
        reader.join(10)
        out = "".join(seen)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, (p.returncode, out, err)
    assert err == "", err
    lines = out.splitlines()
    assert re.search(r"^\[\s*\d+\.\d\ds\] nap\s+running \d+%$", out, re.M), out
    assert re.search(r"^\[\s*\d+\.\d\ds\] nap\s+completed \(attempt 2\)$", out, re.M), out
    assert any(ln.startswith(f"job {jid} (pipeline nap): completed, 100%") for ln in lines), out
    assert any(re.match(r"^1\s+nap\s+completed\s+2\s", ln) for ln in lines), out
    gets = d.find_log(lambda l: l["event"] == "http.access" and l.get("method") == "GET")
    streams = [l for l in gets if l.get("route") == "/v1/jobs/{id}/events"]
    assert len([l for l in streams if l["status"] == 200]) >= 2, streams
    polls = [l for l in gets if l.get("route") == "/v1/jobs/{id}"]
    assert [l["status"] for l in polls] == [200], polls  # only the final read
    job = get_job(d, jid)
    assert job["status"] == "completed" and stage(job, "nap")["attempt"] == 2, job


# --------------------------------------------------------------------------
# cancel, retry, attempts


def test_cancel_a_running_job_and_watch_exits_3(env):
    d, cli = env
    jid = cli.submit("long")
    wait_for(lambda: stage(get_job(d, jid), "nap")["status"] == "running", 20.0, 0.05,
             "nap to run")
    r = cli.ok("cancel", jid)
    assert r.stdout.startswith(f"job {jid}: cancelled"), r.stdout
    job = wait_job(d, jid)
    assert job["status"] == "cancelled" and stage(job, "nap")["status"] == "cancelled", job
    r = cli.run("watch", jid)
    assert r.returncode == 3, r
    assert f"job {jid} (pipeline long): cancelled" in r.stdout
    # cancelling again is fine; a completed job can't be cancelled
    assert cli.ok("cancel", jid).stdout.startswith(f"job {jid}: cancelled")
    done = cli.submit("quick")
    wait_job(d, done)
    r = cli.run("cancel", done)
    assert r.returncode == 1, r
    assert one_line_error(r)[0].startswith("stageline: Job already finished: "), r.stderr


def test_cancel_json_is_the_job(env):
    d, cli = env
    jid = cli.submit("long")
    doc = json.loads(cli.ok("cancel", jid, "--json").stdout)
    assert doc["id"] == jid and doc["status"] == "cancelled", doc
    wait_job(d, jid)


def test_retry_from_stage_and_attempts(env):
    d, cli = env
    jid = cli.submit("quick")
    assert wait_job(d, jid)["status"] == "completed"
    r = cli.ok("retry", jid, "--from-stage", "second")
    assert re.match(rf"^job {jid}: queued \(attempt 2\), runs again: second$", r.stdout), r.stdout
    job = wait_job(d, jid)
    assert job["status"] == "completed" and job["attempt"] == 2, job
    assert stage(job, "second")["attempt"] == 2 and stage(job, "first")["attempt"] == 1, job

    r = cli.ok("attempts", jid, "second")
    lines = r.stdout.splitlines()
    assert lines[0] == f"stage second of job {jid}: completed, attempt 2", lines
    assert re.split(r"\s{2,}", lines[1]) == ["ATTEMPT", "OUTCOME", "INSTANCE", "PID", "EXIT",
                                             "FETCH", "RUN", "UPLOAD", "ERROR"], lines
    rows = [re.split(r"\s{2,}", ln.rstrip()) for ln in lines[2:]]
    assert [row[:2] for row in rows] == [["1", "completed"], ["2", "completed"]], rows
    for row in rows:
        assert re.match(r"^[0-9a-f]{16}$", row[2]) and re.match(r"^\d+$", row[3]), row
        assert row[4] == "0", row
        assert all(re.match(r"^\d+ms$|^\d+\.\d\ds$", c) for c in row[5:8]), row
    # by number too, and --json is the task
    doc = json.loads(cli.ok("attempts", jid, "2", "--json").stdout)
    assert doc["stage"] == "second" and [a["attempt"] for a in doc["attempts"]] == [1, 2], doc

    # retrying a job that is not settled is refused with the problem's words
    long_id = cli.submit("long")
    r = cli.run("retry", long_id)
    assert r.returncode == 1 and "Job not retryable" in r.stderr, r
    cli.ok("cancel", long_id)
    wait_job(d, long_id)
    r = cli.ok("retry", long_id)
    assert r.stdout.startswith(f"job {long_id}: queued (attempt 2)"), r.stdout
    cli.ok("cancel", long_id)
    wait_job(d, long_id)


def test_attempts_of_a_flaky_stage(env):
    d, cli = env
    jid = cli.submit("flaky")
    assert wait_job(d, jid)["status"] == "completed"
    r = cli.ok("attempts", jid, "f")
    rows = [re.split(r"\s{2,}", ln.rstrip()) for ln in r.stdout.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["1", "error"], ["2", "error"], ["3", "completed"]], rows
    assert rows[0][8] == "FLAKY (module): attempt 1 of 2 planned failures", rows
    assert len(rows[2]) == 8, rows  # no error for the one that completed
    r = cli.run("attempts", jid, "nope")
    assert r.returncode == 1 and "has no stage 'nope' (its stages: f)" in r.stderr, r


def test_artifacts_lists_the_stored_files(env):
    d, cli = env
    jid = cli.submit("files")
    assert wait_job(d, jid)["status"] == "completed"
    r = cli.ok("artifacts", jid)
    lines = r.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["STAGE", "NAME", "TYPE", "FORMAT", "ROLE",
                                                      "SIZE", "SHA256"], lines
    rows = [re.split(r"\s{2,}", ln.strip()) for ln in lines[1:] if ln.strip()]
    r = cli.ok("artifacts", jid, "--stage", "make", "--json")
    doc = json.loads(r.stdout)
    assert [(x["stage"], x["file"]["name"], x["file"]["size_bytes"]) for x in doc] == \
        [("make", "note", 16)], doc
    f = doc[0]["file"]
    assert rows == [["make", "note", "text", "txt", "output", "16 B", f["sha256"][:12]]], rows
    # the signed link downloads the file (the daemon's file store)
    assert f["url"].startswith("/v1/objects/") and f["expires_at"].endswith("Z"), f
    st, _, body = d.http("GET", f["url"])
    assert st == 200 and len(body) == 16
    assert hashlib.sha256(body).hexdigest() == f["sha256"]
    assert json.loads(cli.ok("artifacts", jid, "--stage", "use", "--json").stdout) == []
    r = cli.run("artifacts", jid, "--stage", "nope")
    assert r.returncode == 1 and "has no stage 'nope'" in r.stderr, r


# --------------------------------------------------------------------------
# logs

class LOG_LINE:
    """The start of a stage.log line: [time] [stage] [LEVEL] """

    @staticmethod
    def format(stage, level):
        return (r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[" + re.escape(stage) +
                r"\] \[" + level + r"\] ")


def test_logs_of_a_finished_job(env):
    d, cli = env
    jid = cli.submit("broken")
    job = wait_job(d, jid)
    assert job["status"] == "failed", job
    r = cli.ok("logs", jid)
    assert r.stderr == "", r.stderr
    out = r.stdout
    # one section per stage, in stage order, each under a header like tail's
    heads = [ln for ln in out.splitlines() if ln.startswith("==> ")]
    assert heads == ["==> 01_ok <==", "==> 02_bad <=="], out
    ok_part, bad_part = out.split("==> 02_bad <==\n")
    assert ok_part.startswith("==> 01_ok <==\n") and ok_part.endswith("\n\n"), out
    assert re.search(LOG_LINE.format(stage="ok", level="INFO") + r"Stage ok: STARTING$", ok_part,
                     re.M), ok_part
    assert re.search(LOG_LINE.format(stage="ok", level="INFO") +
                     r"Stage ok: COMPLETED \(\d+\.\ds\)$", ok_part, re.M), ok_part
    # the module's own log line, then the failure
    assert re.search(LOG_LINE.format(stage="bad", level="INFO") + r"failing on purpose$",
                     bad_part, re.M), bad_part
    assert re.search(LOG_LINE.format(stage="bad", level="ERROR") + r"Stage bad: FAILED: ",
                     bad_part, re.M), bad_part
    # each section is the stored log, as the API gives it
    for s, part in (("ok", ok_part), ("bad", bad_part)):
        st, _, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{stage(job, s)['task_id']}/logs")
        assert st == 200 and body.decode() in part, (st, body, part)

    # --stage (a name or a number): that stage alone, no header
    r = cli.ok("logs", jid, "--stage", "bad")
    assert r.stdout == bad_part, (r.stdout, bad_part)
    r = cli.ok("logs", jid, "--stage", "1")
    assert r.stdout == ok_part[len("==> 01_ok <==\n"):-1], r.stdout

    # --json: one object per stage
    r = cli.ok("logs", jid, "--json")
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [(doc["stage"], doc["task_id"]) for doc in docs] == [
        ("ok", stage(job, "ok")["task_id"]), ("bad", stage(job, "bad")["task_id"])], docs
    assert "Stage ok: COMPLETED" in docs[0]["log"] and "failing on purpose" in docs[1]["log"]
    r = cli.ok("--json", "logs", jid, "--stage", "bad")
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(docs) == 1 and docs[0]["stage"] == "bad", docs

    # -f on a job that has settled: what is stored, then the job's outcome at once
    r = cli.run("logs", jid, "-f")
    assert r.returncode == 1 and r.stderr == "", r
    assert r.stdout == out, (r.stdout, out)

    # a stage the job does not have
    r = cli.run("logs", jid, "--stage", "nope")
    assert r.returncode == 1 and r.stdout == "", r
    assert one_line_error(r) == [f"stageline: job {jid} has no stage 'nope' "
                                 "(its stages: ok, bad)"], r.stderr


def test_logs_skip_the_stages_that_have_not_run(env):
    d, cli = env
    jid = cli.submit("held")
    wait_for(lambda: stage(get_job(d, jid), "nap")["status"] == "running", 20.0, 0.05,
             "nap to run")
    # a stage that has not run: left out, or named: its problem and exit 1
    r = cli.ok("logs", jid)
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("==> ")] == ["==> 01_nap <=="], r
    assert re.search(LOG_LINE.format(stage="nap", level="INFO") + r"Stage nap: STARTING$",
                     r.stdout, re.M), r.stdout
    r = cli.run("logs", jid, "--stage", "after")
    assert r.returncode == 1 and r.stdout == "", r
    lines = one_line_error(r)
    assert len(lines) == 1 and lines[0].startswith("stageline: Not Found"), lines
    r = cli.ok("logs", jid, "--json")
    assert [json.loads(ln)["stage"] for ln in r.stdout.splitlines()] == ["nap"], r.stdout
    # cancelled: the stages that never ran stay without a log
    cli.ok("cancel", jid)
    wait_job(d, jid)
    r = cli.ok("logs", jid)
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("==> ")] == ["==> 01_nap <=="], r
    r = cli.run("logs", jid, "--stage", "2")
    assert r.returncode == 1 and "Not Found" in r.stderr, r


class Follower:
    """`stageline logs -f` running, its stdout lines read as they come."""

    def __init__(self, cli, *args):
        self.p = subprocess.Popen([cli.path, "logs", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=cli.env(), cwd=cli.cwd)
        self.lines = queue.Queue()
        self.seen = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for ln in self.p.stdout:
            self.lines.put(ln.rstrip("\n"))
        self.lines.put(None)

    def until(self, pattern, timeout=30.0):
        """Reads lines until one matches pattern; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ln = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line like {pattern!r} in {timeout}s: {self.seen}")
            assert ln is not None, f"the output ended without {pattern!r}: {self.seen}"
            self.seen.append(ln)
            if re.search(pattern, ln):
                return ln

    def finish(self, timeout=30.0):
        rc = self.p.wait(timeout=timeout)
        self.thread.join(5)
        while True:
            ln = self.lines.get_nowait() if not self.lines.empty() else None
            if ln is None:
                break
            self.seen.append(ln)
        err = self.p.stderr.read()
        self.p.stdout.close()
        self.p.stderr.close()
        for marker in SANITIZER:
            assert marker not in err, err
        return rc, err

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


def test_logs_follow_prints_lines_as_they_come(env):
    d, cli = env
    jid = cli.submit("chatty")
    wait_for(lambda: stage(get_job(d, jid), "nap")["status"] == "running", 20.0, 0.05,
             "nap to run")
    everything = Follower(cli, jid, "-f")
    only_talk = Follower(cli, jid, "--follow", "--stage", "talk", "--json")
    try:
        # what nap has logged so far is printed first, under its header
        assert everything.until(r"^==> ") == "==> 01_nap <=="
        everything.until(r"\[nap\] \[INFO\] Stage nap: STARTING$")
        # then the live lines: talk's log lines (one per failing attempt) and outcomes
        assert re.match(r"^\[nap\] complete \(attempt 1, \d+(ms|\.\d\ds)\)$",
                        everything.until(r"^\[nap\] ")), everything.seen
        assert everything.until(r"^\[talk\] ") == "[talk] failing on purpose"
        assert everything.until(r"^\[talk\] ") == "[talk] failing on purpose"
        assert re.match(r"^\[talk\] complete \(attempt 3, \d+(ms|\.\d\ds)\)$",
                        everything.until(r"^\[talk\] ")), everything.seen
        # ... before the job ends: rest still runs
        assert get_job(d, jid)["status"] == "running"
        everything.until(r"^\[rest\] complete \(attempt 1, ")
        rc, err = everything.finish()
        assert rc == 0 and err == "", (rc, err, everything.seen)
        assert everything.seen[-1].startswith("[rest] complete"), everything.seen
        # --stage talk --json: talk's stored log (none yet: it had not run) and its events
        rc, err = only_talk.finish()
        assert rc == 0 and err == "", (rc, err, only_talk.seen)
        docs = [json.loads(ln) for ln in only_talk.seen]
        assert {doc["stage"] for doc in docs} == {"talk"}, docs
        logs = [doc for doc in docs if doc["kind"] == "log"]
        assert [doc["data"]["message"] for doc in logs] == ["failing on purpose"] * 2, docs
        assert docs[-1]["kind"] == "job.module.complete", docs
    finally:
        everything.kill()
        only_talk.kill()
    assert get_job(d, jid)["status"] == "completed"

    # a job that fails: exit 1, a cancelled one: exit 3
    jid = cli.submit("broken")
    r = cli.run("logs", jid, "-f")
    assert r.returncode == 1, r
    jid = cli.submit("long")
    wait_for(lambda: stage(get_job(d, jid), "nap")["status"] == "running", 20.0, 0.05,
             "nap to run")
    f = Follower(cli, jid, "-f")
    try:
        f.until(r"Stage nap: STARTING$")
        cli.ok("cancel", jid)
        rc, err = f.finish()
        assert rc == 3 and err == "", (rc, err, f.seen)
    finally:
        f.kill()


# --------------------------------------------------------------------------
# errors


def test_daemon_not_running_names_the_url(cli_path, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cli = Cli(cli_path, url, tmp_path)
    for args in (["list"], ["status", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"], ["pipelines"],
                 ["submit", "p"], ["watch", "x"]):
        r = cli.run(*args)
        assert r.returncode == 1, (args, r)
        assert r.stderr == f"stageline: cannot connect to {url}: Connection refused\n", r.stderr
        assert r.stdout == ""
    # the URL from --url wins over STAGELINE_URL, with a base path kept in the message
    other = f"http://127.0.0.1:{free_port()}/base"
    r = cli.run("--url", other, "list")
    assert r.returncode == 1 and f"cannot connect to {other}:" in r.stderr, r
    r = cli.run("list", "--url", other + "/")
    assert r.returncode == 1 and f"cannot connect to {other}:" in r.stderr, r
    # the default URL
    r = Cli(cli_path, None, tmp_path).run("list", env={"STAGELINE_URL": ""})
    assert r.returncode == 1 and "http://127.0.0.1:8080" in r.stderr, r


def test_https_and_bad_urls_are_refused(cli_path, tmp_path):
    cli = Cli(cli_path, "https://127.0.0.1:8443", tmp_path)
    r = cli.run("list")
    assert r.returncode == 1 and "https:// is not supported yet" in r.stderr, r
    assert len(r.stderr.splitlines()) == 1
    for url in ("ftp://x", "http://", "http://host:99999", "http://u:p@host", "http://h/?q=1"):
        r = cli.run("--url", url, "list")
        assert r.returncode == 1 and r.stderr.startswith("stageline: "), (url, r)


def test_unknown_job_prints_the_problem(env):
    _, cli = env
    for args in (["status", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"], ["watch", "nope"],
                 ["cancel", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"], ["retry", "not a uuid"],
                 ["attempts", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d", "a"],
                 ["logs", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"],
                 ["logs", "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d", "-f"]):
        r = cli.run(*args)
        assert r.returncode == 1, (args, r)
        assert r.stderr == "stageline: Not Found: no such job\n", (args, r.stderr)
        assert r.stdout == ""
    # an id is one path segment, escaped: a slash can't reach another route
    r = cli.run("status", "x/../../v1/pipelines")
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.startswith("stageline: Bad Request: "), r.stderr


def test_bad_arguments_are_usage_errors(env, tmp_path):
    _, cli = env
    cases = [
        [],
        ["submit"],
        ["submit", "quick", "extra"],
        ["submit", "quick", "--param", "novalue"],
        ["submit", "quick", "--param", "=1"],
        ["submit", "quick", "--input", "{bad json"],
        ["submit", "quick", "--input", "1", "--input-file", "x.json"],
        ["submit", "quick", "--resume-from", "only-a-job"],
        ["submit", "quick", "--same-input"],
        ["submit", "quick", "--resume-from", "j:s", "--same-input", "--input", "1"],
        ["status", "x", "--same-input"],
        ["submit", "quick", "--interval", "1"],
        ["submit", "quick", "--wait", "--interval", "fast"],
        ["submit", "quick", "--from-stage", "a"],
        ["status"],
        ["status", "a", "b"],
        ["list", "--limit", "0"],
        ["list", "--limit", "201"],
        ["list", "--limit", "ten"],
        ["list", "extra"],
        ["list", "--wait"],
        ["watch"],
        ["watch", "x", "--interval", "0"],
        ["watch", "x", "--interval"],
        ["cancel"],
        ["retry"],
        ["retry", "x", "--status", "failed"],
        ["attempts", "x"],
        ["logs"],
        ["logs", "x", "y"],
        ["logs", "x", "--stage"],
        ["logs", "x", "--interval", "1"],
        ["status", "x", "-f"],
        ["watch", "x", "--follow"],
        ["pipelines", "extra"],
        ["status", "x", "--bogus"],
        ["frobnicate"],
    ]
    for args in cases:
        r = cli.run(*args)
        assert r.returncode == 2, (args, r)
        assert "usage: stageline" in r.stderr, (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    r = cli.run("attempts", "x")
    assert "the STAGE is missing" in r.stderr, r.stderr
    r = cli.run("status", "x", "-f")
    assert "-f does not apply to `stageline status`" in r.stderr, r.stderr
    # --help is not an error
    for cmd in ("submit", "status", "list", "watch", "cancel", "retry", "attempts", "logs",
                "pipelines"):
        r = cli.ok(cmd, "--help")
        assert r.stdout.startswith(f"usage: stageline {cmd}"), r.stdout
    r = cli.ok("--help")
    for cmd in ("submit", "status", "list", "watch", "cancel", "retry", "attempts", "logs",
                "pipelines", "projects create", "keys create"):
        assert f"  {cmd}" in r.stdout, (cmd, r.stdout)


def test_unreadable_and_invalid_files(env, tmp_path):
    _, cli = env
    bad = tmp_path / "bad-params.json"
    bad.write_text('{"n": 1,,}')
    r = cli.run("submit", "quick", "--params-file", str(bad))
    assert r.returncode == 1, r
    assert len(r.stderr.splitlines()) == 1 and str(bad) in r.stderr, r.stderr
    assert "invalid JSON" in r.stderr and "line 1" in r.stderr, r.stderr
    r = cli.run("submit", "quick", "--params-file", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "missing.json" in r.stderr and "No such file" in r.stderr, r
    arr = tmp_path / "array.json"
    arr.write_text("[1, 2]")
    r = cli.run("submit", "quick", "--params-file", str(arr))
    assert r.returncode == 1 and "must be a JSON object" in r.stderr and str(arr) in r.stderr, r
    badin = tmp_path / "bad-input.json"
    badin.write_text("not json")
    r = cli.run("submit", "quick", "--input-file", str(badin))
    assert r.returncode == 1 and str(badin) in r.stderr and "invalid JSON" in r.stderr, r
    r = cli.run("submit", "quick", "--input-file", str(tmp_path))
    assert r.returncode == 1 and "Is a directory" in r.stderr, r


# --------------------------------------------------------------------------
# the HTTP client against a canned server: framing, requests, odd answers


class CannedServer:
    """Answers the i-th connection with replies[i] (a list of byte strings
    sent with short pauses, then close) and records each request as
    (head, body). No daemon, no database."""

    def __init__(self, replies, pause=0.02):
        self.replies = list(replies)
        self.pause = pause
        self.requests = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for reply in self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length: *(\d+)", head)
                while m and len(body) < int(m.group(1)):
                    body += conn.recv(65536)
                self.requests.append((head.decode(), body))
                for part in reply:
                    conn.sendall(part)
                    time.sleep(self.pause)

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_http_client_framing_and_odd_answers(cli_path, tmp_path):
    empty = b'{"data": []}'
    cases = [
        # chunked, split across writes, with a chunk extension and a trailer
        ([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
          b"\r\n", b"5;ext=1\r\n{\"dat\r\n", b"5\r\na\": [\r\n", b"2\r\n]}\r\n",
          b"0\r\nX-Trailer: 1\r\n\r\n"], 0, '{\n  "data": []\n}\n'),
        # no Content-Length: the body ends when the server closes
        ([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b'{"data": [', b"]}"],
         0, '{\n  "data": []\n}\n'),
        # an interim 100 before the answer; LF-only lines
        ([b"HTTP/1.1 100 Continue\r\n\r\n",
          b"HTTP/1.1 200 OK\nContent-Length: 12\n\n" + empty], 0, '{\n  "data": []\n}\n'),
        # a problem, chunked
        ([b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n",
          b"%x\r\n" % len(PROBLEM_503) + PROBLEM_503 + b"\r\n0\r\n\r\n"],
         1, "stageline: Database unavailable: PostgreSQL is unreachable\n"),
        # not a problem: the status line speaks
        ([b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\n<b>x</b>\n"], 1,
         "stageline: GET {url}/v1/pipelines: HTTP 502 Bad Gateway\n"),
        ([b"HELLO\r\n\r\n"], 1, None),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\""], 1, None),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], 1, None),
        ([], 1, None),  # closed without a word
    ]
    srv = CannedServer([reply for reply, _, _ in cases])
    try:
        url = f"http://127.0.0.1:{srv.port}/base"
        cli = Cli(cli_path, url, tmp_path)
        results = [cli.run("pipelines", "--json", "--api-key", "sl_test", timeout=20)
                   for _ in cases]
    finally:
        srv.close()
    for (reply, rc, want), r in zip(cases, results):
        assert r.returncode == rc, (reply, r)
        if rc == 0:
            assert r.stdout == want and r.stderr == "", (reply, r)
        else:
            assert r.stdout == "" and len(r.stderr.splitlines()) == 1, (reply, r)
            if want:
                assert r.stderr == want.format(url=url), (reply, r.stderr)
    assert "not an HTTP/1.x status line" in results[5].stderr, results[5].stderr
    assert "before the response was complete" in results[6].stderr, results[6].stderr
    assert "the answer is not JSON" in results[7].stderr, results[7].stderr
    assert "without a response" in results[8].stderr, results[8].stderr
    # what the client sent: the base path, Host, the key, Connection: close, no body
    head = srv.requests[0][0].split("\r\n")
    assert head[0] == "GET /base/v1/pipelines HTTP/1.1", head
    hdrs = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in head[1:])}
    assert hdrs["host"] == f"127.0.0.1:{srv.port}", hdrs
    assert hdrs["authorization"] == "Bearer sl_test", hdrs
    assert hdrs["connection"] == "close" and hdrs["user-agent"].startswith("stageline/"), hdrs
    assert "content-length" not in hdrs and srv.requests[0][1] == b""


PROBLEM_503 = json.dumps({"type": "urn:stageline:problem:db-unavailable",
                          "title": "Database unavailable", "status": 503,
                          "detail": "PostgreSQL is unreachable"}).encode()


def test_http_client_sends_the_submission(cli_path, tmp_path):
    jid = "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"
    body = json.dumps({"id": jid, "status": "queued"}).encode()
    srv = CannedServer([[b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body]])
    try:
        cli = Cli(cli_path, f"http://localhost:{srv.port}", tmp_path)
        r = cli.run("submit", "speech", "--param", "speed=170", "--input", '"hi"',
                    "--idempotency-key", "order-1", "--resume-from", f"{jid}:align")
    finally:
        srv.close()
    assert r.returncode == 0 and r.stdout == jid + "\n", r
    head, sent = srv.requests[0]
    lines = head.split("\r\n")
    assert lines[0] == "POST /v1/jobs HTTP/1.1", lines
    hdrs = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
    assert hdrs["host"] == f"localhost:{srv.port}" and "authorization" not in hdrs, hdrs
    assert hdrs["content-type"] == "application/json", hdrs
    assert hdrs["content-length"] == str(len(sent)) and hdrs["idempotency-key"] == "order-1"
    assert json.loads(sent) == {"pipeline": "speech", "params": {"speed": 170}, "input": "hi",
                                "resume_from": {"job_id": jid, "stage": "align"}}, sent
    # a header value can't smuggle another header in
    r = Cli(cli_path, f"http://127.0.0.1:{free_port()}", tmp_path).run(
        "submit", "speech", "--idempotency-key", "a\r\nX-Evil: 1")
    assert r.returncode == 1 and "control character" in r.stderr, r


# --------------------------------------------------------------------------
# watch against a canned server: the event stream applied, resumed and given up, and the
# polling fallback for a daemon without it

CJ = "0190b5a0-3c1e-7a4f-8d2b-5e6f7a8b9c0d"
T1 = "0190b5a0-0000-7000-8000-000000000001"
T2 = "0190b5a0-0000-7000-8000-000000000002"
TIMING = {"fetch_ms": None, "run_ms": None, "upload_ms": None}


def ts(s):
    return f"2026-11-26T01:00:{s}Z"


def canned_job(status, nap, seq, **job):
    """A job as GET /v1/jobs/{id} shows it: prep completed, nap as given."""
    prep = {"stage": "prep", "stage_number": 1, "task_id": T1, "module": "noop",
            "engine_id": None, "status": "completed", "started_at": ts("00.100000"),
            "completed_at": ts("00.200000"), "duration_ms": 100, "required": True,
            "retries": 0, "attempt": 1, "error": None, "skip_reason": None,
            "ready_at": ts("00.000000"), "wait_ms": 100, "progress": 1.0, "depends_on": [],
            "timing": TIMING}
    stage2 = {"stage": "nap", "stage_number": 2, "task_id": T2, "module": "sleep",
              "engine_id": None, "status": "running", "started_at": ts("01.000000"),
              "completed_at": None, "duration_ms": 500, "required": True, "retries": 0,
              "attempt": 1, "error": None, "skip_reason": None, "ready_at": ts("00.200000"),
              "wait_ms": 800, "progress": 0.1, "depends_on": ["prep"], "timing": TIMING}
    stage2.update(nap)
    doc = {"id": CJ, "pipeline": "slow", "status": status, "progress": 0.55,
           "current_stage": "nap", "attempt": 1, "created_at": ts("00.000000"),
           "queued_at": ts("00.000000"), "started_at": ts("00.100000"), "completed_at": None,
           "duration_ms": 1400, "error": None, "logs_key": None, "params": {},
           "event_seq": seq, "total_wait_ms": 900, "stages": [prep, stage2]}
    doc.update(job)
    return doc


def sse(event, data, eid=None):
    head = f"id: {eid}\n" if eid is not None else ""
    return (head + f"event: {event}\ndata: {json.dumps(data)}\n\n").encode()


def stage_event(seq, kind, st_from, st_to, at, **data):
    return {"id": 100 + seq, "seq": seq, "ts": ts(at), "kind": kind, "job_id": CJ,
            "task_id": T2, "stage": "nap", "status_from": st_from, "status_to": st_to,
            "reason": "r", "request_id": None,
            "data": dict({"tasks_total": 2, "tasks_completed": 1, "tasks_failed": 0,
                          "tasks_running": 0}, **data)}


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\nretry: 3000\n\n")
FLAKY = {"code": "FLAKY", "category": "module", "retryable": True, "message": "try again"}
SNAP1 = canned_job("running", {}, 6)
SNAP2 = canned_job("running", {"attempt": 2, "retries": 1, "progress": 0.0, "error": FLAKY,
                               "started_at": ts("02.100000"), "ready_at": ts("02.000000"),
                               "duration_ms": 0, "wait_ms": 100}, 8, progress=0.5)
FINAL = canned_job("completed", {"status": "completed", "attempt": 2, "retries": 1,
                                 "progress": 1.0, "started_at": ts("02.100000"),
                                 "completed_at": ts("03.000000"), "duration_ms": 900,
                                 "ready_at": ts("02.000000"), "wait_ms": 100,
                                 "engine_id": "sleep@1"}, 10, progress=1.0,
                   current_stage=None, completed_at=ts("03.000000"), duration_ms=2900,
                   total_wait_ms=1000)


def reconnect_replies():
    """Three connections: a stream that breaks in the middle of event 8, its
    resumption (replay of 8, snapshot, 9, 10, end), then the final GET."""
    enqueue = {"id": 101, "seq": 1, "ts": ts("00.000000"), "kind": "job.lifecycle.enqueue",
               "job_id": CJ, "task_id": None, "stage": None, "status_from": "pending",
               "status_to": "queued", "reason": "submitted", "request_id": None,
               "data": {"tasks_total": 2}}
    progress = {"ts": ts("01.500000"), "kind": "progress", "job_id": CJ, "task_id": T2,
                "stage": "nap", "data": {"progress": 0.6, "attempt": 1}}
    retry = stage_event(7, "job.module.retry", "running", "ready", "02.000000", module="sleep",
                        attempt=1, duration_ms=1000, error=FLAKY, retries=1, backoff_ms=10)
    spawn = stage_event(8, "job.module.spawn", "ready", "running", "02.100000", module="sleep",
                        attempt=2)
    done = stage_event(9, "job.module.complete", "running", "completed", "03.000000",
                       module="sleep", attempt=2, duration_ms=900, engine_id="sleep@1")
    complete = {"id": 110, "seq": 10, "ts": ts("03.000000"), "kind": "job.lifecycle.complete",
                "job_id": CJ, "task_id": None, "stage": None, "status_from": "running",
                "status_to": "completed", "reason": "all_stages_done", "request_id": None,
                "data": {"tasks_total": 2, "tasks_completed": 2}}
    final = json.dumps(FINAL).encode()
    return [
        [SSE_HEAD, sse("lifecycle", enqueue, 1), sse("snapshot", SNAP1), b": heartbeat\n\n",
         sse("progress", progress), sse("stage", retry, 7),
         sse("stage", spawn, 8)[:-1]],  # no blank line: event 8 is not complete
        [SSE_HEAD, sse("stage", spawn, 8), sse("snapshot", SNAP2), sse("stage", done, 9),
         sse("lifecycle", complete, 10),
         sse("end", {"job_id": CJ, "status": "completed", "last_seq": 10})],
        [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"10\"\r\n"
         b"Content-Length: %d\r\n\r\n" % len(final) + final],
    ]


def request_lines(srv):
    out = []
    for head, _ in srv.requests:
        lines = head.split("\r\n")
        out.append((lines[0], {k.lower(): v for k, _, v in (ln.partition(": ")
                                                            for ln in lines[1:])}))
    return out


# Parts of a canned stream this far apart arrive one by one, even under valgrind.
STREAM_PAUSE = 0.15


def test_watch_resumes_a_broken_stream_with_last_event_id(cli_path, tmp_path):
    srv = CannedServer(reconnect_replies(), pause=STREAM_PAUSE)
    try:
        cli = Cli(cli_path, f"http://127.0.0.1:{srv.port}", tmp_path)
        r = cli.run("watch", CJ, "--interval", "0.01", timeout=30)
    finally:
        srv.close()
    assert r.returncode == 0 and r.stderr == "", r
    got = [re.sub(r"^\[\s*\d+\.\d\ds\] ", "", ln) for ln in r.stdout.splitlines()
           if re.match(r"^\[\s*\d+\.\d\ds\] ", ln)]
    assert [re.sub(r"\s+", " ", ln) for ln in got] == [
        "prep completed",
        "nap running 10%",
        "nap running 60%",
        "nap ready: FLAKY (module): try again",
        "nap running 0% (attempt 2): FLAKY (module): try again",
        "nap completed (attempt 2)",
    ], r.stdout
    assert f"job {CJ} (pipeline slow): completed, 100%, 2.90s (waited 1.00s)" in r.stdout
    assert re.search(r"^2\s+nap\s+completed\s+2\s+100ms\s+900ms\s*$", r.stdout, re.M), r.stdout
    reqs = request_lines(srv)
    assert [line for line, _ in reqs] == [f"GET /v1/jobs/{CJ}/events HTTP/1.1"] * 2 + [
        f"GET /v1/jobs/{CJ} HTTP/1.1"], reqs
    assert reqs[0][1]["accept"] == "text/event-stream" and "last-event-id" not in reqs[0][1]
    # resumed after the last whole event: 7, not the 8 that broke off
    assert reqs[1][1]["last-event-id"] == "7", reqs[1]
    assert "if-none-match" not in reqs[2][1], reqs[2]


def test_watch_json_applies_the_events_to_the_snapshot(cli_path, tmp_path):
    srv = CannedServer(reconnect_replies(), pause=STREAM_PAUSE)
    try:
        cli = Cli(cli_path, f"http://127.0.0.1:{srv.port}", tmp_path)
        r = cli.run("watch", CJ, "--json", "--interval", "0.01", timeout=30)
    finally:
        srv.close()
    assert r.returncode == 0 and r.stderr == "", r
    docs = [json.loads(ln) for ln in r.stdout.splitlines()]
    # the snapshots and the final GET come through as they are
    assert docs[0] == SNAP1 and docs[-1] == FINAL and SNAP2 in docs, docs
    assert sum(1 for doc in docs if doc["status"] == "completed") == 1, docs
    # progress: the stage's, the job's and the running stage's run time, on the server's clock
    moved = next(doc for doc in docs if doc["stages"][1]["progress"] == 0.6)
    assert moved["progress"] == 0.8 and moved["stages"][1]["duration_ms"] == 500, moved
    # a retry: back to ready with the attempt's error, the run's timestamps cleared
    ready = next(doc for doc in docs if doc["stages"][1]["status"] == "ready")
    nap = ready["stages"][1]
    assert nap["error"] == FLAKY and nap["retries"] == 1 and nap["attempt"] == 1, nap
    assert nap["ready_at"] == ts("02.000000") and nap["started_at"] is None, nap
    assert nap["duration_ms"] is None and nap["wait_ms"] == 0 and nap["progress"] == 0, nap
    assert ready["event_seq"] == 7 and ready["progress"] == 0.5, ready
    assert ready["current_stage"] is None and ready["duration_ms"] == 1900, ready
    # the module's result: completed, its error gone, run time from its start
    i = docs.index(SNAP2)
    if i + 2 < len(docs):  # unless the result and the job's end arrived in one read
        nap = docs[i + 1]["stages"][1]
        assert docs[i + 1]["status"] == "running" and nap["status"] == "completed", docs[i + 1]
        assert nap["error"] is None and nap["progress"] == 1 and nap["attempt"] == 2, nap
        assert nap["completed_at"] == ts("03.000000") and nap["duration_ms"] == 900, nap
        assert nap["engine_id"] == "sleep@1" and docs[i + 1]["progress"] == 1, docs[i + 1]


def test_watch_polls_a_daemon_without_the_event_stream(cli_path, tmp_path):
    def answer(status, doc, etag=None, reason="OK"):
        body = json.dumps(doc).encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status,
                                                                          reason.encode())
        if etag:
            head += b"ETag: \"%s\"\r\n" % etag.encode()
        return [head + b"Content-Length: %d\r\n\r\n" % len(body) + body]

    not_found = answer(404, {"type": "urn:stageline:problem:not-found", "title": "Not Found",
                             "status": 404, "detail": "no such route"}, reason="Not Found")
    not_allowed = [b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"]
    cancelled = canned_job("cancelled", {"status": "cancelled", "progress": 0.0}, 9)
    srv = CannedServer([not_found, answer(200, SNAP1, "6"),
                        [b"HTTP/1.1 304 Not Modified\r\nETag: \"6\"\r\n\r\n"],
                        answer(200, FINAL, "10"),
                        not_allowed, answer(200, cancelled, "9")])
    try:
        cli = Cli(cli_path, f"http://127.0.0.1:{srv.port}", tmp_path)
        first = cli.run("watch", CJ, "--interval", "0.05", timeout=30)
        second = cli.run("watch", CJ, "--interval", "0.05", timeout=30)
    finally:
        srv.close()
    assert first.returncode == 0 and first.stderr == "", first
    assert f"job {CJ} (pipeline slow): completed, 100%" in first.stdout, first.stdout
    assert second.returncode == 3 and second.stderr == "", second
    reqs = request_lines(srv)
    assert [line for line, _ in reqs] == [
        f"GET /v1/jobs/{CJ}/events HTTP/1.1", f"GET /v1/jobs/{CJ} HTTP/1.1",
        f"GET /v1/jobs/{CJ} HTTP/1.1", f"GET /v1/jobs/{CJ} HTTP/1.1",
        f"GET /v1/jobs/{CJ}/events HTTP/1.1", f"GET /v1/jobs/{CJ} HTTP/1.1"], reqs
    assert [h.get("if-none-match") for _, h in reqs] == [None, None, '"6"', '"6"', None,
                                                         None], reqs


def test_watch_gives_up_after_30s_without_the_stream(cli_path, tmp_path):
    srv = CannedServer([[SSE_HEAD, sse("snapshot", SNAP1)]])
    cli = Cli(cli_path, f"http://127.0.0.1:{srv.port}", tmp_path)
    t0 = time.monotonic()
    p = subprocess.Popen([cli.path, "watch", CJ], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=cli.env(), cwd=cli.cwd)
    try:
        # once the one stream has been served, nothing listens there any more
        srv.thread.join(20)
        srv.sock.close()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        srv.close()
    elapsed = time.monotonic() - t0
    assert p.returncode == 1, (p.returncode, out, err)
    assert err == (f"stageline: lost the event stream of job {CJ} and could not resume it for "
                   f"30 s: cannot connect to http://127.0.0.1:{srv.port}: Connection refused\n"), err
    assert 29 <= elapsed <= 40, elapsed
    assert re.search(r"^\[\s*\d+\.\d\ds\] nap\s+running 10%$", out, re.M), out


# --------------------------------------------------------------------------
# auth


def test_auth_on_needs_a_key(daemon, pg, dbname, cli_path, tmp_path):
    d = start(daemon, pg, dbname, {"quick": PIPES["quick"]}, auth=True)
    db_url = pg.url(dbname=dbname)
    cli = Cli(cli_path, d.base_url, tmp_path)
    cli.ok("--database-url", db_url, "projects", "create", "acme")
    key = cli.ok("--database-url", db_url, "keys", "create", "--project", "acme", "--scopes",
                 "jobs:read,jobs:write").stdout.strip()
    reader = cli.ok("--database-url", db_url, "keys", "create", "--project", "acme", "--scopes",
                    "jobs:read").stdout.strip()

    r = cli.run("list")
    assert r.returncode == 1, r
    assert r.stderr.splitlines() == [
        "stageline: Unauthorized: a valid API key is required",
        "stageline: no API key was given: pass --api-key or set STAGELINE_API_KEY"], r.stderr
    r = cli.run("list", "--api-key", "sl_bogus")
    assert r.returncode == 1 and r.stderr == \
        "stageline: Unauthorized: a valid API key is required\n", r.stderr

    jid = cli.submit("quick", "--api-key", key)
    r = cli.run("watch", jid, "--interval", "0.05", env={"STAGELINE_API_KEY": key})
    assert r.returncode == 0, r
    r = cli.ok("list", env={"STAGELINE_API_KEY": key})
    assert jid in r.stdout
    r = cli.ok("--api-key", key, "status", jid)
    assert "completed" in r.stdout
    # a key without jobs:write: 403 with the missing scope
    r = cli.run("submit", "quick", "--api-key", reader)
    assert r.returncode == 1, r
    assert "stageline:   missing scopes: jobs:write" in r.stderr.splitlines(), r.stderr
    # the secret never reaches the output
    for text in (r.stdout, r.stderr):
        assert reader[12:44] not in text
