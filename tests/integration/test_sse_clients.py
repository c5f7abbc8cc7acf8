"""Live job events (GET /v1/jobs/{id}/events, docs/api.md "Following a job
live") as real clients see them: the `eventsource` npm package (a
browser-compatible EventSource, run from Node by tests/integration/
sse_client.mjs) following a job to `end`, and resuming across a daemon
restart — SIGTERM ends the streams and re-queues the running task, a new
daemon on the same database and port carries on — with the Python client of
test_sse.py (reconnecting by hand with Last-Event-ID) and with EventSource
(reconnecting by itself). In every case the durable events the client saw,
over all its connections, are exactly the job's job_events rows: 1..N, no
gap, no duplicate. The last test has EventSource's reconnect reach the new
daemon while it is still starting (held on the migration lock): it must not
be lost there.

The Node client needs node >= 20 and `eventsource` in the repository's
node_modules (contrib/npm-tools installs both; contrib/check runs it); the
Node tests are skipped with the reason when either is missing."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from conftest import Daemon, clean_env
from test_engine import REPO, edb, start, submit, wait_job  # noqa: F401 (edb is a fixture)
from test_sse import Stream, db_events, durable

PIPES = {
    # progress every 50 ms (at most 10/s reach a stream), then one more stage
    "slow": {"stages": [
        {"name": "s", "module": "sleep", "params": {"seconds": 1.5, "tick": 0.05}},
        {"name": "t", "module": "echo", "needs": ["s"]},
    ]},
    # long enough that a SIGTERM with a 1 s shutdown_grace catches it running
    "slow3": {"stages": [
        {"name": "s", "module": "sleep", "params": {"seconds": 3, "tick": 0.05}},
        {"name": "t", "module": "echo", "needs": ["s"]},
    ]},
}

# db/migrate.h PG_MIGRATE_LOCK_KEY (as in test_db.py): holding it keeps a
# starting daemon in its "schema is being checked" phase, listener open
MIGRATE_LOCK_KEY = 0x73746167656C696E

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sse_client.mjs")
NODE_MIN = 20


# --------------------------------------------------------------------------
# the Node EventSource client


def node_binary():
    """The node contrib/npm-tools chose (build/tools/bin/node when the
    system's is too old), else the one on PATH; skips when there is none
    new enough or eventsource is not installed."""
    cands = [os.path.join(REPO, "build", "tools", "bin", "node"), shutil.which("node")]
    found = []
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        try:
            r = subprocess.run([c, "-p", "process.versions.node"], capture_output=True, text=True,
                               timeout=20)
            major = int(r.stdout.strip().split(".")[0])
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        found.append(f"{c} ({r.stdout.strip()})")
        if major >= NODE_MIN:
            break
    else:
        pytest.skip(f"no node >= {NODE_MIN} (found: {', '.join(found) or 'none'}); "
                    "run contrib/npm-tools")
    if not os.path.exists(os.path.join(REPO, "node_modules", "eventsource", "package.json")):
        pytest.skip(f"the eventsource npm package is not installed in {REPO}/node_modules; "
                    "run contrib/npm-tools")
    return c


class NodeClient:
    """sse_client.mjs running in the background; its JSON lines are read
    by a thread as they come."""

    def __init__(self, url, timeout=60.0, min_requests=1):
        self.argv = [node_binary(), CLIENT, url, "--timeout", str(timeout),
                     "--min-requests", str(min_requests)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, cwd=REPO)
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for ln in self.proc.stdout:
            try:
                obj = json.loads(ln)
            except ValueError:
                obj = {"t": "garbage", "line": ln}
            with self.cond:
                self.lines.append(obj)
                self.cond.notify_all()

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"node client: no {what} within {timeout}s; "
                                         f"lines:\n{self.dump()}")
                self.cond.wait(min(left, 0.1))

    def finish(self, timeout=90.0):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node client still running after {timeout}s; lines:\n"
                                 f"{self.dump()}")
        self.reader.join(10)
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def events(self):
        return [ln for ln in self.lines if ln["t"] == "event"]

    def summary(self):
        s = [ln for ln in self.lines if ln["t"] == "summary"]
        assert len(s) == 1, self.dump()
        return s[0]

    def check(self, rc, summary):
        """The script's own checks passed (exit 0, summary ok)."""
        if rc == 0 and summary["ok"] and not self.stderr.strip():
            return
        brief = [ln for ln in self.lines if ln["t"] != "event"
                 or ln["event"] not in ("progress", "snapshot")]
        lines = "\n".join(json.dumps(ln)[:300] for ln in brief[-60:])
        raise AssertionError("node client: exit {}, problems:\n  {}\nstderr: {}\nlines "
                             "(no progress/snapshot):\n{}".format(
                                 rc, "\n  ".join(summary["problems"]), self.stderr[-2000:],
                                 lines))

    def dump(self):
        return "\n".join(json.dumps(ln) for ln in self.lines[-200:])


def es_events(evs):
    """Node client event lines in the shape of test_sse.Stream's events."""
    return [{"id": int(e["id"]) if e["id"] is not None else None, "event": e["event"],
             "data": e["data"], "n": e["n"]} for e in evs]


def check_against_db(edb, job_id, evs):
    """The durable events the client saw are exactly job_events, in order,
    each with its kind and the SSE type that kind gets."""
    rows = db_events(edb, job_id)
    assert rows, "no job_events rows"
    got = durable(evs)
    assert [e["id"] for e in got] == [r[0] for r in rows] == list(range(1, len(rows) + 1)), \
        ([(e["id"], e["data"]["kind"]) for e in got], rows)
    assert [e["data"]["kind"] for e in got] == [r[1] for r in rows]
    for e in got:
        want = "lifecycle" if e["data"]["kind"].startswith("job.lifecycle.") else "stage"
        assert e["event"] == want, e
        assert e["data"]["seq"] == e["id"] and e["data"]["job_id"] == job_id, e
    return rows


# --------------------------------------------------------------------------
# a second daemon on the same database and port


def restart_same_port(factory, old, name, ready=True):
    """After old has exited: a new stagelined with old's config file (same
    database, same port, same pipelines); waits until it answers /healthz
    and, with ready, until it is ready and its scheduler runs."""
    assert not old.running()
    d = Daemon(factory, name, old.cfg_path, old.argv, clean_env(), old.port,
               [r.pattern for r in old.expect_errors], False)
    factory.daemons.append(d)
    d.start(wait_healthy=True)
    if ready:
        wait_started(d)
    return d


def wait_started(d):
    d.wait_ready(timeout=20.0)
    line = d.wait_log(lambda l: l["event"] == "instance.register", timeout=10.0,
                      what="instance.register")
    d.instance_id = line["instance_id"]
    d.wait_log(lambda l: l["event"] == "sched.start", timeout=10.0, what="sched.start")
    return d


def stop_draining(d):
    """SIGTERM; the daemon must exit 0 (streams ended, the running task
    returned to ready)."""
    rc = d.stop(signal.SIGTERM, timeout=30.0)
    assert rc == 0, (rc, d.log_text()[-3000:])


def check_requeued(edb, job_id):
    """The SIGTERM caught the sleep stage running: it went back to ready
    with reason shutdown and ran again (on the new daemon)."""
    kinds = edb.all("SELECT seq, kind, stage, reason FROM job_events WHERE job_id = %s "
                    "ORDER BY seq", (job_id,))
    assert any(k["kind"] == "job.module.retry" and k["reason"] == "shutdown" for k in kinds), kinds
    spawns = [k for k in kinds if k["kind"] == "job.module.spawn" and k["stage"] == "s"]
    assert len(spawns) == 2, kinds


# --------------------------------------------------------------------------
# tests


def test_eventsource_follows_a_job_to_end(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "slow", input={"x": 1})
    c = NodeClient(f"http://127.0.0.1:{d.port}/v1/jobs/{job['id']}/events", timeout=60)
    try:
        rc = c.finish()
    finally:
        c.kill()
    s = c.summary()
    c.check(rc, s)
    assert s["reason"] == "end" and s["requests"] == 1 and s["last_event_ids"] == [None], s
    assert s["ready_state"] == 2, s  # closed on end: no reconnect
    assert not [ln for ln in c.lines if ln["t"] == "error"], c.dump()
    evs = es_events(c.events())
    rows = check_against_db(edb, job["id"], evs)
    types = [e["event"] for e in evs]
    assert types.count("snapshot") == 1 and types[-1] == "end" and "reset" not in types, types
    end = evs[-1]["data"]
    assert end == {"job_id": job["id"], "status": "completed", "last_seq": len(rows)}, end
    snap_at = types.index("snapshot")
    snap = evs[snap_at]["data"]
    assert snap["id"] == job["id"] and "stages" in snap
    assert snap["event_seq"] >= max([e["id"] for e in durable(evs[:snap_at])] or [0])
    # progress: live only (no id), from the sleep stage, after the snapshot
    prog = [i for i, e in enumerate(evs) if e["event"] == "progress"]
    assert prog and min(prog) > snap_at, types
    for i in prog:
        e = evs[i]
        assert e["id"] is None and e["data"]["stage"] == "s", e
        assert 0 <= e["data"]["data"]["progress"] <= 1, e
    assert wait_job(d, job["id"])["status"] == "completed"


def test_python_client_resumes_across_a_daemon_restart(daemon, edb):
    d1 = start(daemon, edb, PIPES, grace="1s")
    job = submit(d1, "slow3")
    s = Stream(d1, job["id"], timeout=30.0)
    assert s.status == 200
    # read until the sleep stage is running and reporting
    first = []
    while not any(e["event"] == "progress" for e in first):
        got = s.events(max_events=1)
        assert got and got[0]["event"] != "end", (first, got)
        first += got
    stop_draining(d1)
    # the rest of what d1 sent before it ended the stream, then EOF
    first += s.events()
    s.close()
    assert "end" not in [e["event"] for e in first], first
    seen = [e["id"] for e in durable(first)]
    assert seen == list(range(1, len(seen) + 1)), seen
    last = seen[-1]

    d2 = restart_same_port(daemon, d1, "eng-restarted")
    s = Stream(d2, job["id"], last_id=last, timeout=30.0)
    assert s.status == 200
    second = s.events()
    s.close()
    types = [e["event"] for e in second]
    assert "reset" not in types and types.count("snapshot") == 1 and types[-1] == "end", types
    assert all(e["id"] > last for e in durable(second)), (last, durable(second))
    rows = check_against_db(edb, job["id"], first + second)
    assert second[-1]["data"] == {"job_id": job["id"], "status": "completed",
                                  "last_seq": len(rows)}
    check_requeued(edb, job["id"])


def test_eventsource_reconnects_by_itself_across_a_daemon_restart(daemon, edb):
    d1 = start(daemon, edb, PIPES, grace="1s")
    job = submit(d1, "slow3")
    c = NodeClient(f"http://127.0.0.1:{d1.port}/v1/jobs/{job['id']}/events", timeout=90,
                   min_requests=2)
    try:
        c.wait_for(lambda ls: any(ln["t"] == "event" and ln["event"] == "progress" for ln in ls),
                   30.0, "progress event")
        stop_draining(d1)
        # EventSource notices the end of the stream (error, readyState
        # CONNECTING) and waits `retry: 3000` before it tries again
        c.wait_for(lambda ls: any(ln["t"] == "error" for ln in ls), 10.0, "error after SIGTERM")
        d2 = restart_same_port(daemon, d1, "eng-restarted")
        rc = c.finish()
    finally:
        c.kill()
    s = c.summary()
    c.check(rc, s)
    assert s["reason"] == "end" and s["requests"] >= 2, s
    evs = es_events(c.events())
    rows = check_against_db(edb, job["id"], evs)
    # every reconnect carried the last id seen so far (the script checks
    # each one; here: the first had none and a later one resumed mid-job)
    lei = s["last_event_ids"]
    assert lei[0] is None and all(x is not None for x in lei[1:]), lei
    assert 0 < int(lei[-1]) < len(rows), (lei, len(rows))
    # the connection that got to the end was to d2, after d1 had gone
    last_n = evs[-1]["n"]
    assert last_n > 1 and evs[-1]["event"] == "end", evs[-1]
    assert [e["id"] for e in durable(evs) if e["n"] == last_n][:1] == [int(lei[last_n - 1]) + 1]
    assert evs[-1]["data"] == {"job_id": job["id"], "status": "completed", "last_seq": len(rows)}
    per_conn = {}
    for e in evs:
        per_conn.setdefault(e["n"], []).append(e["event"])
    for n, types in per_conn.items():
        assert types.count("snapshot") == 1 and "reset" not in types, (n, types)
    assert "end" not in per_conn[evs[0]["n"]], per_conn
    check_requeued(edb, job["id"])
    assert wait_job(d2, job["id"])["status"] == "completed"


def test_eventsource_keeps_reconnecting_while_the_new_daemon_starts(daemon, edb):
    """A rolling restart where EventSource's reconnect reaches the new
    daemon before it is ready (here: while its schema check waits for the
    migration lock the test holds; unforced, the window is tens of ms). The
    client must still get to `end` with every event once the daemon is up:
    EventSource gives up for good on a non-200 answer (WHATWG: "fail the
    connection", no reconnect), so a 503 `starting` loses it."""
    d1 = start(daemon, edb, PIPES, grace="1s")
    job = submit(d1, "slow3")
    c = NodeClient(f"http://127.0.0.1:{d1.port}/v1/jobs/{job['id']}/events", timeout=90,
                   min_requests=2)
    holder = psycopg2.connect(f"host={daemon.pg.dir} port={daemon.pg.port} user=postgres "
                              f"dbname={edb.name}")
    holder.autocommit = True
    try:
        c.wait_for(lambda ls: any(ln["t"] == "event" and ln["event"] == "progress" for ln in ls),
                   30.0, "progress event")
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
        stop_draining(d1)
        d2 = restart_same_port(daemon, d1, "eng-restarted", ready=False)
        st, _, b = d2.http("GET", "/readyz")
        assert st == 503, (st, b)  # still starting: the lock holds it
        # the next reconnect (every `retry: 3000`) reaches d2 while it starts
        with c.cond:
            asked = sum(1 for ln in c.lines if ln["t"] == "request")
        c.wait_for(lambda ls: sum(1 for ln in ls if ln["t"] == "request") > asked, 10.0,
                   "a reconnect to the starting daemon")
        # ... and the starting daemon has answered it (200, retry, close)
        c.wait_for(lambda ls: any(ln["t"] == "error" and ln["n"] == asked + 1 for ln in ls),
                   10.0, "the starting daemon to end that stream")
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_KEY,))
        wait_started(d2)
        rc = c.finish()
    finally:
        c.kill()
        holder.close()
    s = c.summary()
    c.check(rc, s)
    evs = es_events(c.events())
    rows = check_against_db(edb, job["id"], evs)
    assert evs[-1]["data"] == {"job_id": job["id"], "status": "completed", "last_seq": len(rows)}
    check_requeued(edb, job["id"])
