"""The job engine end to end: the scheduler claiming ready tasks under
leases, running real modules (contrib/modules/*.py, the C noop, and
tests/integration/modules/echo.py), committing their outcomes, advancing each
job's DAG, retrying with backoff, failing and skipping, cancelling, rescuing
the work of a dead or paused instance, draining on SIGTERM, sharing one
database between two daemons, and the retry / resume / task endpoints.

Every test gets a database of its own (so no other test's queued jobs can be
claimed by its modules) and daemons whose config is written as JSON (nested
modules and pipelines) and registered with the conftest factory, so each gets
the usual post-mortem: no sanitizer report, no unexpected level=error line,
exit 0 within 10 s of SIGTERM. The scheduler runs with short timers (lease
3 s, heartbeat 1 s, rescue and poll every 1 s) unless a test needs others.

What the tests read: the API (GET /v1/jobs/{id}), job_events (every
transition, gapless seq per job), task_attempts (one row per attempt), the
file store under <tmp_path>/var/objects, /proc (a module's process, found by
the STAGELINE_TASK_ID of its environment), and the daemons' JSON logs.
"""

import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import re
import signal
import threading
import time
import uuid

import psycopg2
import psycopg2.extras
import pytest

from conftest import Daemon, clean_env, stageline_db, start_demo
from slhelpers import UUID_RE, free_port, wait_for

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PY = "/usr/bin/python3"
PROBLEM = "urn:stageline:problem:"


def pymod(rel):
    return [PY, os.path.join(REPO, rel)]


def module_def(name):
    """The config of one of the test modules, by name."""
    if name == "noop":
        path = os.environ.get("NOOP_MODULE")
        if not path:
            pytest.skip("NOOP_MODULE is not set (make check sets it to the built noop module)")
        if not os.access(path, os.X_OK):
            pytest.fail(f"NOOP_MODULE={path} is not an executable file")
        return {"command": [path], "persistent": True, "concurrency": 256}
    rel = {
        "sleep": "contrib/modules/sleep.py",
        "flaky": "contrib/modules/flaky.py",
        "crash": "contrib/modules/crash.py",
        "hang": "contrib/modules/hang.py",
        "echo": "tests/integration/modules/echo.py",
        "flood": "contrib/modules/flood.py",
    }[name]
    return {"command": pymod(rel), "concurrency": 4}


FAST = {"enabled": True, "lease": "3s", "heartbeat": "1s", "rescue_every": "1s", "poll": "1s",
        "max_concurrency": 16}

TERMINAL_JOB = ("completed", "failed", "cancelled")
SETTLED_TASK = ("completed", "failed", "skipped", "cancelled")
TERMINAL_KINDS = ("job.lifecycle.complete", "job.lifecycle.fail", "job.lifecycle.cancel")

# kind -> (allowed status_from, status_to, allowed reasons or None)
KIND_EDGES = {
    "job.lifecycle.enqueue": ({"pending"}, "queued", {"submitted"}),
    "job.lifecycle.start": ({"queued"}, "running", {"task_claimed"}),
    "job.lifecycle.complete": ({"running"}, "completed", {"all_stages_done"}),
    "job.lifecycle.fail": ({"running", "queued"}, "failed", {"stage_failed", "input_invalid"}),
    "job.lifecycle.cancel": ({"pending", "queued", "running"}, "cancelled", None),
    "job.lifecycle.retry": ({"completed", "failed", "cancelled"}, "queued", {"requested"}),
    "job.stage.ready": ({"pending"}, "ready", {"no_dependencies", "dependencies_completed"}),
    "job.stage.skipped": ({"pending", "ready"}, "skipped", {"dependency_failed", "reused"}),
    "job.stage.cancelled": ({"pending", "ready", "running"}, "cancelled", None),
    "job.stage.reset": ({"completed", "failed", "skipped", "cancelled", "ready"}, "pending",
                        {"retry"}),
    "job.module.spawn": ({"ready"}, "running", {"claimed"}),
    "job.module.complete": ({"running"}, "completed", {"result"}),
    "job.module.error": ({"running"}, "failed", {"error_frame"}),
    "job.module.panic": ({"running"}, "failed", {"crashed", "signalled", "protocol_error"}),
    "job.module.timeout": ({"running"}, "failed", {"deadline"}),
    "job.module.retry": ({"running"}, "ready", {"error_frame", "crashed", "signalled",
                                                "protocol_error", "deadline", "lease_expired",
                                                "shutdown"}),
}

ERR_LIFECYCLE = r'"event":"job\.lifecycle\.fail"'
ERR_MODULE = r'"event":"job\.module\.(error|panic|timeout)"'


# --------------------------------------------------------------------------
# the database


class Db:
    """An autocommit connection to the test's own database; rows as dicts."""

    def __init__(self, pg, name):
        self.name = name
        self.conn = psycopg2.connect(f"host={pg.dir} port={pg.port} user=postgres dbname={name}")
        self.conn.autocommit = True

    def all(self, sql, args=()):
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, args)
            return [dict(r) for r in cur.fetchall()]

    def one(self, sql, args=()):
        rows = self.all(sql, args)
        assert len(rows) == 1, (sql, args, rows)
        return rows[0]

    def close(self):
        self.conn.close()


@pytest.fixture
def edb(pg, request):
    name = "eng_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50].strip("_")
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name}")
    d = Db(pg, name)
    yield d
    d.close()


# --------------------------------------------------------------------------
# daemons


def start(factory, edb, pipelines, *, modules=None, scheduler=None, config=None, name=None,
          expect_errors=(), auth=False, grace="3s"):
    """A stagelined on the test's database with these pipelines and the test
    modules they use (module overrides merged in); waits until it is ready,
    the default project exists (without auth) and, with the scheduler on,
    until the scheduler runs. Sets d.instance_id from its log."""
    name = name or f"eng-{len(factory.daemons)}"
    port = free_port()
    tree = factory.base_config(port)
    tree["database"]["url"] = factory.pg.url(dbname=edb.name)
    tree["server"]["shutdown_grace"] = grace
    tree["auth"] = {"enabled": auth}
    used = {s["module"] for p in pipelines.values() for s in p["stages"]}
    mods = {m: module_def(m) for m in sorted(used)}
    for m, over in (modules or {}).items():
        mods[m] = {**(mods.get(m) or module_def(m)), **over}
    tree["modules"] = mods
    tree["pipelines"] = pipelines
    tree["scheduler"] = {**FAST, **(scheduler or {})}
    for k, v in (config or {}).items():
        node = tree
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    raw = ("# written by tests/integration/test_engine.py (JSON is YAML)\n"
           + json.dumps(tree, indent=2))
    cfg_path, _ = factory.write_config(raw=raw, name=name, port=port)
    argv = [factory.binary, "-c", cfg_path, "--log-format", "json"]
    d = Daemon(factory, name, cfg_path, argv, clean_env(), port, expect_errors, False)
    factory.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_ready(timeout=20.0)
    if not auth:
        wait_for(lambda: edb.all("SELECT 1 FROM projects WHERE id = 'default'"), 10.0, 0.02,
                 "the default project row")
    line = d.wait_log(lambda l: l["event"] == "instance.register", timeout=10.0,
                      what="instance.register")
    d.instance_id = line["instance_id"]
    if tree["scheduler"]["enabled"]:
        d.wait_log(lambda l: l["event"] == "sched.start", timeout=10.0, what="sched.start")
    return d


def _json(b):
    try:
        return json.loads(b) if b else None
    except ValueError:
        return None


def submit(d, pipeline, params=None, input=None, headers=None, extra=None, want=201):
    body = {"pipeline": pipeline}
    if params is not None:
        body["params"] = params
    if input is not None:
        body["input"] = input
    body.update(extra or {})
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    st, _, b = d.http("POST", "/v1/jobs", body=json.dumps(body), headers=h, timeout=15.0)
    assert st == want, (st, b[:1000])
    return _json(b)


def get_job(d, job_id, headers=None):
    st, _, b = d.http("GET", f"/v1/jobs/{job_id}", headers=headers or {}, timeout=10.0)
    assert st == 200, (st, b[:500])
    return json.loads(b)


def wait_job(d, job_id, statuses=TERMINAL_JOB, timeout=30.0, settled=True, edb=None):
    """Polls GET /v1/jobs/{id} until the job's status is in statuses (and,
    with settled, none of its stages is ready or running); returns it."""
    last = {}

    def done():
        j = get_job(d, job_id)
        last["job"] = j
        if j["status"] not in statuses:
            return None
        if settled and any(s["status"] not in SETTLED_TASK for s in j["stages"]):
            return None
        return j

    try:
        return wait_for(done, timeout, 0.05, f"job {job_id} in {statuses}")
    except AssertionError as e:
        j = last.get("job")
        summary = None
        if j:
            summary = (j["status"], [(s["stage"], s["status"], s["attempt"]) for s in j["stages"]])
        extra = ""
        if edb is not None:
            extra = "\nevents:\n" + "\n".join(fmt_event(ev) for ev in events(edb, job_id))
        raise AssertionError(f"{e}; last seen {summary}{extra}") from None


def stage(job, name):
    for s in job["stages"]:
        if s["stage"] == name:
            return s
    raise KeyError(name)


def ts(s):
    """An API timestamp (RFC 3339, µs, Z) as an aware datetime."""
    assert isinstance(s, str) and s.endswith("Z"), s
    return datetime.datetime.fromisoformat(s[:-1] + "+00:00")


def events(edb, job_id):
    return edb.all("SELECT seq, kind, task_id::text AS task_id, stage, status_from, status_to, "
                   "reason, request_id, data, ts, txid::text AS txid FROM job_events "
                   "WHERE job_id = %s ORDER BY seq", (job_id,))


def fmt_event(e):
    data = {k: v for k, v in e["data"].items()
            if k not in ("tasks_total", "tasks_completed", "tasks_failed", "tasks_running")}
    return (f"  {e['seq']:3d} {e['ts'].strftime('%H:%M:%S.%f')} {e['kind']:24s} "
            f"{e['stage'] or '-':8s} {e['status_from']}->{e['status_to']} {e['reason']} "
            f"{json.dumps(data, default=str)[:300]}")


def tasks_of(edb, job_id):
    return edb.all("SELECT id::text, stage, stage_number, status, attempt, retries, max_retries, "
                   "error, output, skip_reason, started_at, completed_at, lease_owner, "
                   "lease_token::text AS lease_token, not_before FROM tasks WHERE job_id = %s "
                   "ORDER BY stage_number", (job_id,))


def attempts_of(edb, task_id):
    return edb.all("SELECT * FROM task_attempts WHERE task_id = %s ORDER BY attempt", (task_id,))


def check_events(edb, job_id, terminals=1, soft=None):
    """The invariants every job's events keep; returns the events.

    seq is 1..n without gaps and jobs.event_seq is n; every event's kind
    matches its edge; the job's lifecycle events chain from pending to the
    job's status, and each task's events chain from pending to the task's
    status (every transition is recorded); the counts in data are the
    job's task counts after the event (or after its transaction, for
    events written together); `terminals` terminal lifecycle events. A
    count mismatch goes to soft (a Soft) when one is given, so the test
    goes on to check the rest."""
    evs = events(edb, job_id)
    job = edb.one("SELECT status, event_seq FROM jobs WHERE id = %s", (job_id,))
    tasks = {t["id"]: t for t in tasks_of(edb, job_id)}
    dump = "\n".join(fmt_event(e) for e in evs)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), f"seq gaps:\n{dump}"
    assert job["event_seq"] == len(evs), (job, dump)

    problems = []
    job_cur = "pending"
    task_cur = {tid: "pending" for tid in tasks}
    counts_after = []
    for e in evs:
        edge = KIND_EDGES.get(e["kind"])
        if e["kind"].startswith("job.lifecycle."):
            if e["task_id"] is not None or e["stage"] is not None:
                problems.append(f"seq {e['seq']}: lifecycle event with a task")
            if e["status_from"] != job_cur:
                problems.append(f"seq {e['seq']}: job {e['status_from']}->{e['status_to']}, "
                                f"but the job was {job_cur}")
            job_cur = e["status_to"]
        else:
            tid = e["task_id"]
            if tid not in tasks:
                problems.append(f"seq {e['seq']}: unknown task {tid}")
                continue
            if e["stage"] != tasks[tid]["stage"]:
                problems.append(f"seq {e['seq']}: stage {e['stage']} for task of "
                                f"{tasks[tid]['stage']}")
            if e["status_from"] != task_cur[tid]:
                problems.append(f"seq {e['seq']}: {e['stage']} {e['status_from']}->"
                                f"{e['status_to']}, but the task was {task_cur[tid]}")
            task_cur[tid] = e["status_to"]
        if edge:
            froms, to, reasons = edge
            if e["status_from"] not in froms or e["status_to"] != to:
                problems.append(f"seq {e['seq']}: {e['kind']} with edge {e['status_from']}->"
                                f"{e['status_to']}")
            if reasons is not None and e["reason"] not in reasons:
                problems.append(f"seq {e['seq']}: {e['kind']} with reason {e['reason']!r}")
        counts_after.append({
            "tasks_total": len(tasks),
            "tasks_completed": sum(1 for v in task_cur.values() if v == "completed"),
            "tasks_failed": sum(1 for v in task_cur.values() if v == "failed"),
            "tasks_running": sum(1 for v in task_cur.values() if v == "running"),
        })
    if job_cur != job["status"]:
        problems.append(f"the events leave the job {job_cur}, the row says {job['status']}")
    for tid, t in tasks.items():
        if task_cur[tid] != t["status"]:
            problems.append(f"the events leave {t['stage']} {task_cur[tid]}, the row says "
                            f"{t['status']}")
    # counts: after the event, or after the last event of its transaction
    last_of_txn = {}
    for i, e in enumerate(evs):
        last_of_txn[e["txid"]] = i
    count_problems = []
    for i, e in enumerate(evs):
        got = {k: e["data"].get(k) for k in counts_after[i]}
        if got != counts_after[i] and got != counts_after[last_of_txn[e["txid"]]]:
            count_problems.append(f"seq {e['seq']} {e['kind']}: data counts {got}, but after "
                                  f"it the job's tasks are {counts_after[i]}")
    terms = [e for e in evs if e["kind"] in TERMINAL_KINDS]
    if len(terms) != terminals:
        problems.append(f"{len(terms)} terminal lifecycle events, want {terminals}")
    assert not problems, "\n".join(problems) + "\nevents:\n" + dump
    if count_problems:
        msg = f"job {job_id}: " + "\n".join(count_problems) + "\nevents:\n" + dump
        if soft is None:
            raise AssertionError(msg)
        soft.check(False, msg)
    return evs


class Soft:
    """Checks that don't stop the test: every failed one is reported at the
    end (soft.done()), so one test shows all of its findings."""

    def __init__(self):
        self.problems = []

    def check(self, cond, msg):
        if not cond:
            self.problems.append(str(msg))
        return cond

    def done(self):
        assert not self.problems, "\n".join(["checks failed:"] + self.problems)


def module_events(evs, task_id):
    return [e for e in evs if e["task_id"] == task_id and e["kind"].startswith("job.module.")]


def kinds(evs, task_id=None):
    return [e["kind"] for e in evs if task_id is None or e["task_id"] == task_id]


def module_pids(task_id):
    """Live processes (not zombies) whose environment names this task: a
    one-shot module and anything it started."""
    needle = f"STAGELINE_TASK_ID={task_id}".encode()
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{p}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != "Z":
            pids.append(int(p))
    return pids


def wait_gone(task_id, timeout, what="the module process"):
    wait_for(lambda: not module_pids(task_id), timeout, 0.05,
             f"{what} of task {task_id} to be gone")


def store_dir(factory, job_id, number, name, project="default"):
    return os.path.join(factory.tmp_path, "var", "objects", project, job_id,
                        f"{number:02d}_{name}")


def read_json_file(path):
    with open(path) as f:
        return json.load(f)


def retry_job(d, job_id, body=None, headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    st, hd, b = d.http("POST", f"/v1/jobs/{job_id}/retry",
                       body=json.dumps(body) if body is not None else None, headers=h,
                       timeout=10.0)
    return st, hd, _json(b), b


def assert_problem(st, hd, b, status):
    assert st == status, (st, b[:500])
    assert hd.get("content-type", "").split(";")[0] == "application/problem+json", (hd, b[:300])
    doc = _json(b)
    assert isinstance(doc, dict) and doc.get("status") == status, b[:500]
    assert str(doc.get("type", "")).startswith(PROBLEM), doc
    return doc


# --------------------------------------------------------------------------
# the DAG


def test_dag_parallel_branch_overlaps_and_passes_outputs(daemon, edb):
    soft = Soft()
    pipes = {"dag": {"stages": [
        {"name": "a", "module": "sleep", "params": {"seconds": 0.2}},
        {"name": "b", "module": "sleep", "needs": ["a"], "params": {"seconds": 0.7}},
        {"name": "c", "module": "sleep", "needs": ["a"], "params": {"seconds": 0.7}},
        {"name": "d", "module": "echo", "needs": ["b", "c"]},
    ]}}
    d = start(daemon, edb, pipes)
    job = submit(d, "dag", input={"x": 1})
    jid = job["id"]
    job = wait_job(d, jid, timeout=30, edb=edb)
    assert job["status"] == "completed", job
    assert job["progress"] == 1 and job["error"] is None, job
    assert job["started_at"] and job["completed_at"] and job["duration_ms"] >= 0, job
    for s in job["stages"]:
        assert s["status"] == "completed", s
        assert s["attempt"] == 1 and s["retries"] == 0 and s["error"] is None, s
        assert s["skip_reason"] is None and s["progress"] == 1, s
        assert s["engine_id"] == ("echo@1.0" if s["stage"] == "d" else "sleep@1.0"), s
        for k in ("fetch_ms", "run_ms", "upload_ms"):
            assert isinstance(s["timing"][k], int) and s["timing"][k] >= 0, s
    a, b, c, dd = (stage(job, n) for n in "abcd")
    # the branch really ran in parallel
    overlap = min(ts(b["completed_at"]), ts(c["completed_at"])) - \
        max(ts(b["started_at"]), ts(c["started_at"]))
    assert overlap.total_seconds() > 0.3, f"b and c overlapped {overlap} only: {b} {c}"
    # and in DAG order
    assert ts(a["completed_at"]) <= ts(b["started_at"]), (a, b)
    assert ts(a["completed_at"]) <= ts(c["started_at"]), (a, c)
    assert ts(dd["started_at"]) >= max(ts(b["completed_at"]), ts(c["completed_at"])), (b, c, dd)
    assert b["timing"]["run_ms"] >= 650 and c["timing"]["run_ms"] >= 650, (b, c)

    evs = check_events(edb, jid, soft=soft)
    life = [e["kind"] for e in evs if e["kind"].startswith("job.lifecycle.")]
    assert life == ["job.lifecycle.enqueue", "job.lifecycle.start", "job.lifecycle.complete"], life
    for s in job["stages"]:
        ks = kinds(evs, s["task_id"])
        assert ks == ["job.stage.ready", "job.module.spawn", "job.module.complete"], \
            (s["stage"], ks)
        spawn = module_events(evs, s["task_id"])[0]
        assert spawn["data"]["module"] == ("echo" if s["stage"] == "d" else "sleep"), spawn
        assert spawn["data"]["attempt"] == 1, spawn
        assert spawn["data"]["instance_id"] == d.instance_id, spawn
        assert UUID_RE.match(spawn["data"]["lease_token"]), spawn
    ready = {e["stage"]: e["reason"] for e in evs if e["kind"] == "job.stage.ready"}
    assert ready == {"a": "no_dependencies", "b": "dependencies_completed",
                     "c": "dependencies_completed", "d": "dependencies_completed"}, ready

    # one attempt each, on this instance, with its process and timing
    rows = {t["stage"]: t for t in tasks_of(edb, jid)}
    for name, t in rows.items():
        att = attempts_of(edb, t["id"])
        assert len(att) == 1, att
        r = att[0]
        assert r["attempt"] == 1 and r["outcome"] == "completed", r
        assert r["instance_id"] == d.instance_id and r["pid"] and r["pid"] > 0, r
        assert r["exit_code"] == 0 and r["signal"] is None and r["error"] is None, r
        assert r["ended_at"] is not None and r["ended_at"] >= r["started_at"], r
        for k in ("wait_ms", "fetch_ms", "run_ms", "upload_ms"):
            assert isinstance(r[k], int) and r[k] >= 0, (k, r)

    # the store: input.json, output.json, stage.log per stage; d got b's and c's outputs
    for s in job["stages"]:
        sd = store_dir(daemon, jid, s["stage_number"], s["stage"])
        for f in ("input.json", "output.json", "stage.log"):
            assert os.path.isfile(os.path.join(sd, f)), \
                f"{sd}/{f} missing: {os.listdir(sd) if os.path.isdir(sd) else 'no dir'}"
        out = read_json_file(os.path.join(sd, "output.json"))
        assert out == rows[s["stage"]]["output"], (s["stage"], out, rows[s["stage"]]["output"])
    assert read_json_file(os.path.join(store_dir(daemon, jid, 2, "b"), "output.json")) == \
        {"slept": 0.7}
    given = read_json_file(os.path.join(store_dir(daemon, jid, 4, "d"), "input.json"))
    assert [i["name"] for i in given["inputs"]] == ["input.json", "b.output", "c.output"], given
    out_d = rows["d"]["output"]
    assert out_d["inputs"] == {"input.json": {"x": 1}, "b.output": {"slept": 0.7},
                               "c.output": {"slept": 0.7}}, out_d
    log_b = open(os.path.join(store_dir(daemon, jid, 2, "b"), "stage.log")).read()
    assert "COMPLETED" in log_b, log_b
    # nothing runs any more
    soft.check(job["current_stage"] is None,
               f"current_stage of the completed job is {job['current_stage']!r}, want null")
    soft.done()


# --------------------------------------------------------------------------
# retries, backoff, failures


def test_flaky_stage_succeeds_on_third_try_with_backoff(daemon, edb):
    soft = Soft()
    pipes = {"flaky": {"stages": [
        {"name": "f", "module": "flaky", "retries": 3, "backoff": "200ms",
         "params": {"failures": 2}},
        {"name": "g", "module": "echo", "needs": ["f"]},
    ]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "flaky")["id"]
    job = wait_job(d, jid, timeout=30, edb=edb)
    assert job["status"] == "completed", job
    f = stage(job, "f")
    assert f["status"] == "completed" and f["retries"] == 2 and f["attempt"] == 3, f
    soft.check(f["error"] is None, f"a completed stage keeps its last retry's error: {f['error']}")
    evs = check_events(edb, jid, soft=soft)
    me = module_events(evs, f["task_id"])
    assert [e["kind"] for e in me] == ["job.module.spawn", "job.module.retry"] * 2 + [
        "job.module.spawn", "job.module.complete"], [fmt_event(e) for e in me]
    assert [e["data"]["attempt"] for e in me if e["kind"] == "job.module.spawn"] == [1, 2, 3]
    retries = [(i, e) for i, e in enumerate(me) if e["kind"] == "job.module.retry"]
    for n, (i, e) in enumerate(retries):
        cap_ms = 200 * 2 ** n
        data = e["data"]
        assert e["reason"] == "error_frame", fmt_event(e)
        assert data["retries"] == n + 1 and data["attempt"] == n + 1, fmt_event(e)
        assert data["error"]["code"] == "FLAKY" and data["error"]["category"] == "module", data
        assert data["error"]["retryable"] is True, data
        assert 0 <= data["backoff_ms"] <= cap_ms, fmt_event(e)
        nb = datetime.datetime.fromisoformat(data["not_before"].replace("Z", "+00:00"))
        delay = (nb - e["ts"]).total_seconds() * 1000
        # not_before = (the daemon's now) + backoff, a moment before the row's ts
        assert -50 <= delay <= cap_ms + 1, f"retry {n}: not_before - ts = {delay:.1f} ms, " \
                                           f"want within [0, {cap_ms}]: {fmt_event(e)}"
        assert abs(delay - data["backoff_ms"]) <= 250, (delay, fmt_event(e))
        nxt = me[i + 1]
        assert nxt["kind"] == "job.module.spawn" and nxt["ts"] >= nb, \
            f"attempt {n + 2} spawned at {nxt['ts']}, before not_before {nb}"
        # the retry is claimed when it is due, not at the next safety-net poll (1 s)
        late = (nxt["ts"] - nb).total_seconds()
        soft.check(late < 0.5, f"attempt {n + 2} was claimed {late * 1000:.0f} ms after its "
                               f"not_before {nb} (poll is 1 s): {fmt_event(nxt)}")
    att = attempts_of(edb, f["task_id"])
    assert [(r["attempt"], r["outcome"]) for r in att] == [(1, "error"), (2, "error"),
                                                          (3, "completed")], att
    assert all(r["error"]["code"] == "FLAKY" for r in att[:2]), att
    for r1, r2 in zip(att, att[1:]):
        assert r1["ended_at"] <= r2["started_at"], (r1, r2)
    out = edb.one("SELECT output FROM tasks WHERE id = %s", (f["task_id"],))["output"]
    assert out == {"attempt": 3}, out
    # a retry is a warning, not an error
    lines = d.find_log(lambda l: l["event"] == "job.module.retry")
    assert len(lines) == 2 and all(l["level"] == "warn" for l in lines), lines
    soft.done()


def test_backoff_is_full_jitter(daemon, edb):
    """backoff 400ms, first retry: uniform in [0, 400] ms. 16 jobs: all on
    one side of 200 ms has probability 2^-15."""
    soft = Soft()
    pipes = {"j": {"stages": [{"name": "f", "module": "flaky", "retries": 1, "backoff": "400ms",
                               "params": {"failures": 1}}]}}
    d = start(daemon, edb, pipes, modules={"flaky": {"concurrency": 8}})
    ids = [submit(d, "j")["id"] for _ in range(16)]
    for jid in ids:
        assert wait_job(d, jid, timeout=60, edb=edb)["status"] == "completed"
    delays = []
    for jid in ids:
        evs = check_events(edb, jid, soft=soft)
        r = [e for e in evs if e["kind"] == "job.module.retry"]
        assert len(r) == 1, [fmt_event(e) for e in evs]
        assert 0 <= r[0]["data"]["backoff_ms"] <= 400, fmt_event(r[0])
        delays.append(r[0]["data"]["backoff_ms"])
    assert any(x < 200 for x in delays) and any(x > 200 for x in delays), delays
    assert len(set(delays)) >= 8, f"jitter looks degenerate: {sorted(delays)}"
    soft.done()


def test_input_error_is_never_retried(daemon, edb):
    soft = Soft()
    pipes = {"inp": {"stages": [
        {"name": "f", "module": "flaky", "retries": 3, "backoff": "50ms",
         "params": {"failures": 5, "category": "input"}},
        {"name": "g", "module": "echo", "needs": ["f"]},
    ]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "inp")["id"]
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "failed", job
    f, g = stage(job, "f"), stage(job, "g")
    assert f["status"] == "failed" and f["attempt"] == 1 and f["retries"] == 0, f
    assert f["error"]["category"] == "input" and f["error"]["retryable"] is False, f
    assert f["error"]["code"] == "FLAKY", f
    assert job["error"] == f["error"], (job["error"], f["error"])
    assert g["status"] == "cancelled", g
    evs = check_events(edb, jid, soft=soft)
    assert kinds(evs, f["task_id"]) == ["job.stage.ready", "job.module.spawn", "job.module.error"]
    err_ev = module_events(evs, f["task_id"])[-1]
    assert err_ev["reason"] == "error_frame" and err_ev["data"]["error"] == f["error"], err_ev
    gev = [e for e in evs if e["task_id"] == g["task_id"]]
    assert [(e["kind"], e["status_from"], e["reason"]) for e in gev] == [
        ("job.stage.cancelled", "pending", "job_failed")], [fmt_event(e) for e in gev]
    assert len(attempts_of(edb, f["task_id"])) == 1
    assert not d.find_log(lambda l: l["event"] == "job.module.retry")
    line = d.wait_log(lambda l: l["event"] == "job.lifecycle.fail", what="job.lifecycle.fail")
    assert line["level"] == "error", line
    fail = [e for e in evs if e["kind"] == "job.lifecycle.fail"][0]
    assert fail["reason"] == "stage_failed", fmt_event(fail)
    # proto/events.md: the fail line carries the job's error (the failed stage's)
    assert line["error"] == f["error"], line
    assert line["status_to"] == "failed" and line["job_id"] == jid, line
    soft.done()


def test_retries_exhausted_fail_the_job_and_stop_the_rest(daemon, edb):
    soft = Soft()
    pipes = {"ex": {"stages": [
        {"name": "bad", "module": "flaky", "retries": 2, "backoff": "50ms",
         "params": {"failures": 9}},
        {"name": "slow", "module": "sleep", "params": {"seconds": 30}},
        {"name": "after", "module": "echo", "needs": ["bad"]},
    ]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "ex")["id"]
    job = wait_job(d, jid, statuses=("failed",), settled=False, timeout=30, edb=edb)
    bad = stage(job, "bad")
    assert bad["status"] == "failed" and bad["attempt"] == 3 and bad["retries"] == 2, bad
    assert bad["error"]["code"] == "FLAKY" and "attempt 3" in bad["error"]["message"], bad
    assert job["error"] == bad["error"], (job["error"], bad)
    assert stage(job, "after")["status"] == "cancelled", job
    # the running stage is stopped too, and its module goes away
    t0 = time.monotonic()
    job = wait_job(d, jid, timeout=10, edb=edb)
    slow = stage(job, "slow")
    assert slow["status"] == "cancelled", slow
    print(f"slow stage cancelled {time.monotonic() - t0:.2f}s after the job failed")
    wait_gone(slow["task_id"], 5.0)
    evs = check_events(edb, jid, soft=soft)
    me = module_events(evs, bad["task_id"])
    assert [e["kind"] for e in me] == ["job.module.spawn", "job.module.retry"] * 2 + [
        "job.module.spawn", "job.module.error"], [fmt_event(e) for e in me]
    assert me[-1]["data"]["error"] == bad["error"], fmt_event(me[-1])
    for i, e in enumerate(me[:-1]):
        if e["kind"] == "job.module.retry":
            nb = datetime.datetime.fromisoformat(e["data"]["not_before"].replace("Z", "+00:00"))
            late = (me[i + 1]["ts"] - nb).total_seconds()
            soft.check(0 <= late < 0.5, f"attempt {e['data']['attempt'] + 1} was claimed "
                                        f"{late * 1000:.0f} ms after its not_before (poll is "
                                        f"1 s): {fmt_event(e)} / {fmt_event(me[i + 1])}")
    last = [e for e in evs if e["task_id"] == slow["task_id"]][-1]
    assert (last["kind"], last["status_from"], last["reason"]) == (
        "job.stage.cancelled", "running", "job_failed"), fmt_event(last)
    assert [r["outcome"] for r in attempts_of(edb, bad["task_id"])] == ["error"] * 3
    assert [r["outcome"] for r in attempts_of(edb, slow["task_id"])] == ["cancelled"]
    soft.done()


def test_optional_stage_failure_skips_dependents_and_job_completes(daemon, edb):
    soft = Soft()
    pipes = {"opt": {"stages": [
        {"name": "a", "module": "echo"},
        {"name": "opt", "module": "flaky", "needs": ["a"], "required": False,
         "params": {"failures": 9}},
        {"name": "dep", "module": "echo", "needs": ["opt"]},
        {"name": "dep2", "module": "echo", "needs": ["dep"]},
        {"name": "side", "module": "echo", "needs": ["a"]},
    ]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE])
    jid = submit(d, "opt")["id"]
    job = wait_job(d, jid, timeout=30, edb=edb)
    assert job["status"] == "completed" and job["error"] is None, job
    st = {s["stage"]: (s["status"], s["skip_reason"]) for s in job["stages"]}
    assert st == {"a": ("completed", None), "opt": ("failed", None),
                  "dep": ("skipped", "dependency_failed"), "dep2": ("skipped", "dependency_failed"),
                  "side": ("completed", None)}, st
    assert stage(job, "opt")["error"]["code"] == "FLAKY", job
    assert job["progress"] == 1, job
    evs = check_events(edb, jid, soft=soft)
    skipped = [e for e in evs if e["kind"] == "job.stage.skipped"]
    assert sorted(e["stage"] for e in skipped) == ["dep", "dep2"], [fmt_event(e) for e in evs]
    for e in skipped:
        assert e["reason"] == "dependency_failed" and e["status_from"] == "pending", fmt_event(e)
        assert e["data"].get("cause_stage") == "opt", fmt_event(e)
    assert kinds(evs, stage(job, "opt")["task_id"])[-1] == "job.module.error"
    complete = [e for e in evs if e["kind"] == "job.lifecycle.complete"]
    assert len(complete) == 1 and complete[0]["reason"] == "all_stages_done"
    for name in ("dep", "dep2"):
        assert not attempts_of(edb, stage(job, name)["task_id"]), name
    assert not d.find_log(lambda l: l["event"] == "job.lifecycle.fail")
    soft.done()


def test_stage_timeout_retried_then_fails(daemon, edb):
    soft = Soft()
    pipes = {"to": {"stages": [{"name": "t", "module": "sleep", "timeout": "1s", "retries": 1,
                                "backoff": "100ms", "params": {"seconds": 30}}]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "to")["id"]
    t0 = time.monotonic()
    job = wait_job(d, jid, timeout=25, edb=edb)
    took = time.monotonic() - t0
    assert job["status"] == "failed", job
    t = stage(job, "t")
    assert t["status"] == "failed" and t["attempt"] == 2 and t["retries"] == 1, t
    assert t["error"]["category"] == "timeout", t
    assert job["error"] == t["error"], job
    assert took < 15, f"two 1 s attempts took {took:.1f}s"
    evs = check_events(edb, jid, soft=soft)
    me = module_events(evs, t["task_id"])
    assert [(e["kind"], e["reason"]) for e in me] == [
        ("job.module.spawn", "claimed"), ("job.module.retry", "deadline"),
        ("job.module.spawn", "claimed"), ("job.module.timeout", "deadline")], \
        [fmt_event(e) for e in me]
    assert me[1]["data"]["error"]["category"] == "timeout", fmt_event(me[1])
    att = attempts_of(edb, t["task_id"])
    assert [r["outcome"] for r in att] == ["timeout", "timeout"], att
    for r in att:
        assert 900 <= r["run_ms"] <= 8000, r
    wait_gone(t["task_id"], 5.0)
    soft.done()


def test_crash_is_a_panic_with_its_signal(daemon, edb):
    soft = Soft()
    pipes = {"cr": {"stages": [{"name": "c", "module": "crash", "retries": 1,
                                "backoff": "50ms"}]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "cr")["id"]
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "failed", job
    c = stage(job, "c")
    assert c["attempt"] == 2 and c["error"]["category"] == "module", c
    assert job["error"] == c["error"]
    evs = check_events(edb, jid, soft=soft)
    me = module_events(evs, c["task_id"])
    assert [(e["kind"], e["reason"]) for e in me] == [
        ("job.module.spawn", "claimed"), ("job.module.retry", "signalled"),
        ("job.module.spawn", "claimed"), ("job.module.panic", "signalled")], \
        [fmt_event(e) for e in me]
    for e in (me[1], me[3]):
        assert e["data"].get("signal") == signal.SIGSEGV, fmt_event(e)
        assert e["data"]["error"]["category"] == "module", fmt_event(e)
    att = attempts_of(edb, c["task_id"])
    assert [(r["outcome"], r["signal"]) for r in att] == [("panic", 11), ("panic", 11)], att
    line = d.wait_log(lambda l: l["event"] == "job.module.panic", what="job.module.panic line")
    assert line["level"] == "error", line
    soft.done()


def test_killed_module_process_is_retried(daemon, edb):
    soft = Soft()
    pipes = {"k": {"stages": [{"name": "s", "module": "sleep", "retries": 1, "backoff": "100ms",
                               "params": {"seconds": 2}}]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "k")["id"]
    tid = get_job(d, jid)["stages"][0]["task_id"]
    pids = wait_for(lambda: module_pids(tid), 10.0, 0.02, "the sleep module's process")
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "completed", job
    s = job["stages"][0]
    assert s["attempt"] == 2 and s["retries"] == 1, s
    evs = check_events(edb, jid, soft=soft)
    me = module_events(evs, tid)
    assert [(e["kind"], e["reason"]) for e in me] == [
        ("job.module.spawn", "claimed"), ("job.module.retry", "signalled"),
        ("job.module.spawn", "claimed"), ("job.module.complete", "result")], \
        [fmt_event(e) for e in me]
    assert me[1]["data"].get("signal") == signal.SIGKILL, fmt_event(me[1])
    att = attempts_of(edb, tid)
    assert [(r["outcome"], r["signal"]) for r in att] == [("panic", 9), ("completed", None)], att
    assert att[0]["pid"] == pids[0] and att[1]["pid"] != pids[0], att
    soft.done()


# --------------------------------------------------------------------------
# cancel


def test_cancel_queued_job_with_scheduler_disabled(daemon, edb):
    soft = Soft()
    pipes = {"q": {"stages": [
        {"name": "a", "module": "echo"},
        {"name": "b", "module": "echo", "needs": ["a"]},
    ]}}
    api = start(daemon, edb, pipes, scheduler={"enabled": False}, name="api-only")
    jid = submit(api, "q")["id"]
    assert get_job(api, jid)["status"] == "queued"
    st, _, b = api.http("DELETE", f"/v1/jobs/{jid}")
    assert st == 202, b
    j = json.loads(b)
    assert j["status"] == "cancelled" and j["completed_at"], j
    assert [s["status"] for s in j["stages"]] == ["cancelled", "cancelled"], j
    assert api.http("DELETE", f"/v1/jobs/{jid}")[0] == 202
    evs = check_events(edb, jid, soft=soft)
    assert [e["kind"] for e in evs].count("job.stage.cancelled") == 2

    # a scheduler on the same database leaves it alone (and runs another job)
    eng = start(daemon, edb, pipes, name="engine")
    other = submit(eng, "q")["id"]
    assert wait_job(eng, other, timeout=20, edb=edb)["status"] == "completed"
    assert check_events(edb, jid, soft=soft) == evs
    assert not edb.all("SELECT 1 FROM task_attempts WHERE job_id = %s", (jid,))
    assert get_job(eng, jid)["status"] == "cancelled"
    soft.done()


@pytest.mark.parametrize("via", ["same-instance", "other-instance"])
def test_cancel_ready_pending_and_running_stages(daemon, edb, via):
    """sleep has concurrency 1: one root runs, the other waits ready, the
    join is pending. The heartbeat is slow (8 s), so the running module must
    hear of the cancel through NOTIFY."""
    soft = Soft()
    pipes = {"c": {"stages": [
        {"name": "x", "module": "sleep", "params": {"seconds": 30}},
        {"name": "y", "module": "sleep", "params": {"seconds": 30}},
        {"name": "z", "module": "echo", "needs": ["x", "y"]},
    ]}}
    d = start(daemon, edb, pipes, modules={"sleep": {"concurrency": 1}},
              scheduler={"lease": "20s", "heartbeat": "8s"})
    canceller = d
    if via == "other-instance":
        canceller = start(daemon, edb, pipes, scheduler={"enabled": False}, name="api-only")
    jid = submit(d, "c")["id"]

    def one_running():
        j = get_job(d, jid)
        run = [s for s in j["stages"] if s["status"] == "running"]
        return (j, run[0]) if run and module_pids(run[0]["task_id"]) else None

    job, running = wait_for(one_running, 15.0, 0.05, "a running sleep module")
    waiting = stage(job, "y" if running["stage"] == "x" else "x")
    assert waiting["status"] == "ready", job
    assert stage(job, "z")["status"] == "pending", job
    pids = module_pids(running["task_id"])

    t0 = time.monotonic()
    st, _, b = canceller.http("DELETE", f"/v1/jobs/{jid}")
    assert st == 202, b
    j = json.loads(b)
    assert j["status"] == "cancelled", j
    assert stage(j, waiting["stage"])["status"] == "cancelled", j
    assert stage(j, "z")["status"] == "cancelled", j
    assert stage(j, running["stage"])["status"] in ("running", "cancelled"), j
    assert canceller.http("DELETE", f"/v1/jobs/{jid}")[0] == 202

    job = wait_job(d, jid, timeout=12, edb=edb)
    took = time.monotonic() - t0
    assert stage(job, running["stage"])["status"] == "cancelled", job
    wait_gone(running["task_id"], 5.0)
    assert took < 4.0, f"the running stage took {took:.1f}s to stop (heartbeat is 8 s: NOTIFY " \
                       f"was not acted on)"
    evs = check_events(edb, jid, soft=soft)
    cancel = [e for e in evs if e["kind"] == "job.lifecycle.cancel"]
    assert len(cancel) == 1 and cancel[0]["status_from"] == "running", [fmt_event(e) for e in evs]
    assert cancel[0]["reason"] == "cancelled_by_client", fmt_event(cancel[0])
    by_stage = {e["stage"]: e for e in evs if e["kind"] == "job.stage.cancelled"}
    assert by_stage[waiting["stage"]]["status_from"] == "ready"
    assert by_stage["z"]["status_from"] == "pending"
    assert by_stage[running["stage"]]["status_from"] == "running"
    for e in by_stage.values():
        assert e["reason"] == "job_cancelled", fmt_event(e)
    # proto/events.md: a stopped module's pid (and exit code or signal) is in the event
    soft.check(by_stage[running["stage"]]["data"].get("pid") == pids[0],
               f"job.stage.cancelled of the running stage without its pid {pids[0]}: "
               f"{fmt_event(by_stage[running['stage']])}")
    att = attempts_of(edb, running["task_id"])
    assert [r["outcome"] for r in att] == ["cancelled"], att
    assert not attempts_of(edb, waiting["task_id"])
    assert d.find_log(lambda l: l["event"] == "job.stage.cancelled"
                      and l.get("task_id") == running["task_id"])
    soft.done()


def test_cancel_a_module_that_ignores_cancel_and_sigterm(daemon, edb):
    """hang.py ignores the cancel frame and SIGTERM: SIGKILL after
    cancel_grace + kill_grace (5 s + 5 s) ends it."""
    soft = Soft()
    pipes = {"h": {"stages": [{"name": "h", "module": "hang"}]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "h")["id"]
    tid = get_job(d, jid)["stages"][0]["task_id"]
    wait_for(lambda: module_pids(tid), 10.0, 0.02, "the hang module's process")
    wait_for(lambda: get_job(d, jid)["stages"][0]["status"] == "running", 5.0, 0.05, "running")
    # A cancel before the module's hello ends it at once (there is no
    # protocol to cancel with yet): wait until it has its task (its first
    # stderr line, in the stage's log so far)
    wait_for(lambda: b"hang: task received" in
             d.http("GET", f"/v1/jobs/{jid}/tasks/{tid}/logs")[2], 20.0, 0.05,
             "the hang module to get its task")
    assert d.http("DELETE", f"/v1/jobs/{jid}")[0] == 202
    t0 = time.monotonic()
    job = wait_job(d, jid, timeout=20, edb=edb)
    took = time.monotonic() - t0
    assert job["status"] == "cancelled" and job["stages"][0]["status"] == "cancelled", job
    wait_gone(tid, 3.0)
    print(f"hang module stopped {took:.1f}s after the cancel")
    # cancel ignored, SIGTERM after cancel_grace (5 s) ignored, SIGKILL after kill_grace (5 s)
    assert 8.0 <= took <= 16.0, f"the hang module was stopped {took:.1f}s after the cancel"
    evs = check_events(edb, jid, soft=soft)
    last = evs[-1] if evs[-1]["task_id"] == tid else [e for e in evs if e["task_id"] == tid][-1]
    assert (last["kind"], last["status_from"]) == ("job.stage.cancelled", "running"), \
        fmt_event(last)
    att = attempts_of(edb, tid)
    assert len(att) == 1 and att[0]["outcome"] == "cancelled", att
    assert att[0]["signal"] == signal.SIGKILL, att
    soft.done()


def test_cancel_finished_job_is_409(daemon, edb):
    pipes = {"f": {"stages": [{"name": "a", "module": "echo"}]},
             "bad": {"stages": [{"name": "a", "module": "flaky", "params": {"failures": 1}}]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    done = submit(d, "f")["id"]
    failed = submit(d, "bad")["id"]
    assert wait_job(d, done, edb=edb)["status"] == "completed"
    assert wait_job(d, failed, edb=edb)["status"] == "failed"
    for jid, status in ((done, "completed"), (failed, "failed")):
        n = len(events(edb, jid))
        st, hd, b = d.http("DELETE", f"/v1/jobs/{jid}")
        doc = assert_problem(st, hd, b, 409)
        assert doc["type"] == PROBLEM + "job-finished", doc
        assert len(events(edb, jid)) == n


# --------------------------------------------------------------------------
# crashes, two instances, fencing, drain


def test_daemon_kill9_restart_finishes_every_job_once(daemon, edb):
    soft = Soft()
    pipes = {"two": {"stages": [
        {"name": "s1", "module": "sleep", "params": {"seconds": 0.3}},
        {"name": "s2", "module": "sleep", "needs": ["s1"], "params": {"seconds": 0.6}},
    ]}}
    mods = {"sleep": {"concurrency": 8}}
    a = start(daemon, edb, pipes, modules=mods, name="first")
    ids = [submit(a, "two")["id"] for _ in range(50)]

    def busy():
        r = edb.one("SELECT count(*) FILTER (WHERE status = 'running') AS running, "
                    "count(*) FILTER (WHERE status = 'completed') AS done FROM tasks")
        return r if r["running"] >= 4 and r["done"] >= 10 else None

    wait_for(busy, 30.0, 0.02, "tasks running and some done")
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    # A statement the dead daemon had sent (a claim) may still commit after
    # the kill: wait until its backends are gone before looking.
    wait_for(lambda: edb.one("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = "
                             "current_database() AND pid <> pg_backend_pid() AND "
                             "backend_type = 'client backend'")["n"] == 0,
             10.0, 0.02, "the killed daemon's connections to close")
    # what the dead instance held (nothing moves until the next one starts)
    held = edb.all("SELECT id::text FROM tasks WHERE status = 'running'")
    assert held, "the kill hit no running task"
    assert all(r["lease_owner"] == a.instance_id for r in
               edb.all("SELECT lease_owner FROM tasks WHERE status = 'running'"))
    b = start(daemon, edb, pipes, modules=mods, name="second")
    assert b.instance_id != a.instance_id

    def all_done():
        r = edb.one("SELECT count(*) AS n FROM jobs WHERE status NOT IN "
                    "('completed', 'failed', 'cancelled')")
        return r["n"] == 0

    wait_for(all_done, 90.0, 0.1, "every job to finish after the restart")
    statuses = edb.all("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert statuses == [{"status": "completed", "n": 50}], statuses
    rescued = 0
    for jid in ids:
        evs = check_events(edb, jid, soft=soft)
        for t in tasks_of(edb, jid):
            assert t["status"] == "completed" and t["retries"] == 0, t
            me = module_events(evs, t["id"])
            assert kinds(me).count("job.module.complete") == 1, [fmt_event(e) for e in me]
            att = attempts_of(edb, t["id"])
            assert len(att) == kinds(me).count("job.module.spawn"), (att, me)
            assert all(r["ended_at"] is not None for r in att), att
            lost = [e for e in me if e["kind"] == "job.module.retry"]
            for e in lost:
                assert e["reason"] == "lease_expired", fmt_event(e)
                assert e["data"].get("lost_owner") == a.instance_id, fmt_event(e)
                rescued += 1
            assert [r["outcome"] for r in att[:-1]] == ["lost"] * len(lost), att
            assert att[-1]["outcome"] == "completed", att
    assert rescued == len(held), f"{len(held)} tasks ran on the killed daemon, {rescued} rescued"
    assert b.find_log(lambda l: l["event"] == "sched.rescue")
    soft.done()


def _submit_many(daemons, pipeline, n, threads=8):
    """n POST /v1/jobs spread over the daemons on keep-alive connections."""
    local = threading.local()

    def one(i):
        d = daemons[i % len(daemons)]
        conns = getattr(local, "conns", None)
        if conns is None:
            conns = local.conns = {}
        c = conns.get(d.port)
        if c is None:
            c = conns[d.port] = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        c.request("POST", "/v1/jobs", body=json.dumps({"pipeline": pipeline}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 201, (r.status, body[:300])
        return json.loads(body)["id"]

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return list(ex.map(one, range(n)))


def test_two_daemons_share_500_jobs_no_task_runs_twice(daemon, edb):
    soft = Soft()
    pipes = {"n2": {"stages": [
        {"name": "a", "module": "noop"},
        {"name": "b", "module": "noop", "needs": ["a"]},
    ]}}
    a = start(daemon, edb, pipes, name="one")
    b = start(daemon, edb, pipes, name="two")
    t0 = time.monotonic()
    ids = _submit_many([a, b], "n2", 500)
    assert len(set(ids)) == 500

    def finished():
        r = edb.one("SELECT count(*) AS n FROM jobs WHERE status IN ('completed', 'failed', "
                    "'cancelled')")
        return r["n"] == 500

    wait_for(finished, 90.0, 0.1, "all 500 jobs to finish")
    print(f"500 jobs on two daemons in {time.monotonic() - t0:.1f}s")
    assert edb.all("SELECT status, count(*) AS n FROM jobs GROUP BY status") == [
        {"status": "completed", "n": 500}]

    # gapless events, one terminal event per job (checked in one pass over the table)
    bad = edb.all("SELECT job_id, count(*) AS n, max(seq) AS m, "
                  "count(*) FILTER (WHERE kind IN ('job.lifecycle.complete', "
                  "'job.lifecycle.fail', 'job.lifecycle.cancel')) AS terminal "
                  "FROM job_events GROUP BY job_id "
                  "HAVING count(*) <> max(seq) OR count(*) FILTER (WHERE kind IN "
                  "('job.lifecycle.complete', 'job.lifecycle.fail', 'job.lifecycle.cancel')) <> 1")
    assert not bad, bad[:5]
    for jid in ids[::50]:
        check_events(edb, jid, soft=soft)

    # no task ran twice at once: one spawn per attempt, distinct lease
    # tokens, attempt intervals that do not overlap
    spawns = edb.all("SELECT task_id::text, data->>'lease_token' AS lease, "
                     "data->>'instance_id' AS inst, (data->>'attempt')::int AS attempt "
                     "FROM job_events WHERE kind = 'job.module.spawn'")
    by_task = {}
    for s in spawns:
        by_task.setdefault(s["task_id"], []).append(s)
    assert len(by_task) == 1000, len(by_task)
    leases = [s["lease"] for s in spawns]
    assert len(set(leases)) == len(leases), "a lease token was handed out twice"
    for tid, ss in by_task.items():
        assert sorted(s["attempt"] for s in ss) == list(range(1, len(ss) + 1)), ss
    att = edb.all("SELECT task_id::text, attempt, instance_id, started_at, ended_at, outcome "
                  "FROM task_attempts ORDER BY task_id, attempt")
    per = {}
    for r in att:
        per.setdefault(r["task_id"], []).append(r)
    overlaps = []
    for tid, rows in per.items():
        assert len(rows) == len(by_task[tid]), (rows, by_task[tid])
        assert rows[-1]["outcome"] == "completed", rows
        for r1, r2 in zip(rows, rows[1:]):
            if r1["ended_at"] is None or r1["ended_at"] > r2["started_at"]:
                overlaps.append((r1, r2))
    assert not overlaps, overlaps[:3]
    complete = edb.all("SELECT task_id, count(*) AS n FROM job_events WHERE kind = "
                       "'job.module.complete' GROUP BY task_id HAVING count(*) <> 1")
    assert not complete, complete[:5]
    share = {}
    for r in att:
        share[r["instance_id"]] = share.get(r["instance_id"], 0) + 1
    print(f"attempts per instance: {share}")
    assert set(share) == {a.instance_id, b.instance_id}, share
    soft.done()


def test_stale_lease_result_is_fenced_out(daemon, edb):
    """A is paused (SIGSTOP) past its lease while its module runs; B rescues
    the task and completes it; A's late result (SIGCONT) changes nothing."""
    soft = Soft()
    pipes = {"fence": {"stages": [{"name": "only", "module": "echo",
                                   "params": {"seconds": 3}}]}}
    a = start(daemon, edb, pipes, name="paused")
    jid = submit(a, "fence")["id"]
    tid = get_job(a, jid)["stages"][0]["task_id"]
    wait_for(lambda: module_pids(tid), 10.0, 0.02, "the module running on A")
    first = edb.one("SELECT lease_owner, lease_token::text AS lease, attempt FROM tasks "
                    "WHERE id = %s", (tid,))
    assert first["lease_owner"] == a.instance_id and first["attempt"] == 1, first
    a.send_signal(signal.SIGSTOP)
    try:
        b = start(daemon, edb, pipes, name="rescuer")
        job = wait_job(b, jid, timeout=40, edb=edb)
        assert job["status"] == "completed", job
        before_events = check_events(edb, jid, soft=soft)
        me = module_events(before_events, tid)
        assert [(e["kind"], e["reason"]) for e in me] == [
            ("job.module.spawn", "claimed"), ("job.module.retry", "lease_expired"),
            ("job.module.spawn", "claimed"), ("job.module.complete", "result")], \
            [fmt_event(e) for e in me]
        assert me[0]["data"]["instance_id"] == a.instance_id, fmt_event(me[0])
        assert me[2]["data"]["instance_id"] == b.instance_id, fmt_event(me[2])
        before_task = edb.one("SELECT status, attempt, retries, output, error, lease_token::text "
                              "AS lease, completed_at FROM tasks WHERE id = %s", (tid,))
        assert before_task["attempt"] == 2 and before_task["retries"] == 0, before_task
        assert before_task["output"]["attempt"] == 2, before_task
        before_job = edb.one("SELECT status, completed_at, rev, event_seq, error FROM jobs "
                             "WHERE id = %s", (jid,))
        before_att = attempts_of(edb, tid)
        assert [r["outcome"] for r in before_att] == ["lost", "completed"], before_att
        # A's module answered long ago (3 s after A's spawn, while B waited
        # out the lease and ran its own 3 s attempt): the answer waits in
        # A's pipe. (The module itself may only exit once A closes its stdin.)
        assert (me[3]["ts"] - me[0]["ts"]).total_seconds() > 5, [fmt_event(e) for e in me]
    finally:
        a.send_signal(signal.SIGCONT)
    line = a.wait_log(lambda l: l["event"] in ("job.module.result_fenced", "job.module.lease_lost")
                      and l.get("task_id") == tid, timeout=15.0,
                      what="A fencing out its late result")
    assert line["level"] == "warn", line
    print(f"A after SIGCONT: {line}")
    wait_gone(tid, 10.0, "A's module")
    # give A time for anything else it would do (a commit, an upload, a DAG
    # step, two heartbeats): its instance row shows two more heartbeats,
    # and nothing of the rest may show
    since = edb.one("SELECT now() AS t")["t"]
    wait_for(lambda: edb.one("SELECT heartbeat_at > %s + interval '1.5 seconds' AS ok FROM "
                             "instances WHERE id = %s", (since, a.instance_id))["ok"],
             15.0, 0.1, "two more heartbeats of A")
    assert check_events(edb, jid, soft=soft) == before_events
    assert edb.one("SELECT status, attempt, retries, output, error, lease_token::text AS lease, "
                   "completed_at FROM tasks WHERE id = %s", (tid,)) == before_task
    assert edb.one("SELECT status, completed_at, rev, event_seq, error FROM jobs WHERE id = %s",
                   (jid,)) == before_job
    assert attempts_of(edb, tid) == before_att
    # the store holds what the task's row says: B's attempt, not A's late one
    sd = store_dir(daemon, jid, 1, "only")
    stored = read_json_file(os.path.join(sd, "output.json"))
    soft.check(stored == before_task["output"],
               f"A's late attempt overwrote the stored output.json: the store has attempt "
               f"{stored.get('attempt')} (nonce {stored.get('nonce')}, pid {stored.get('pid')}), "
               f"the task's output is attempt 2 (nonce {before_task['output']['nonce']})")
    given = read_json_file(os.path.join(sd, "input.json"))
    soft.check(given.get("attempt") == 2,
               f"A's late attempt overwrote the stored input.json: attempt {given.get('attempt')}")
    soft.done()


def test_sigterm_drain_finishes_short_returns_long_and_restart_completes(daemon, edb):
    soft = Soft()
    pipes = {"dr": {"stages": [
        {"name": "long", "module": "sleep", "params": {"seconds": 5}},
        {"name": "short", "module": "sleep", "params": {"seconds": 1.5}},
        {"name": "later", "module": "sleep", "params": {"seconds": 0.3}},
        {"name": "tail", "module": "echo", "needs": ["long", "short", "later"]},
    ]}}
    mods = {"sleep": {"concurrency": 2}}
    a = start(daemon, edb, pipes, modules=mods, name="drained", grace="2s")
    jid = submit(a, "dr")["id"]

    def two_running():
        j = get_job(a, jid)
        run = [s for s in j["stages"] if s["status"] == "running"]
        if len(run) == 2 and all(module_pids(s["task_id"]) for s in run):
            return j
        return None

    job = wait_for(two_running, 15.0, 0.02, "two sleep modules running")
    running = {s["stage"] for s in job["stages"] if s["status"] == "running"}
    waiting = [s["stage"] for s in job["stages"] if s["stage"] != "tail"
               and s["status"] == "ready"]
    assert len(waiting) == 1, job
    ids = {s["stage"]: s["task_id"] for s in job["stages"]}
    t0 = time.monotonic()
    rc = a.stop(signal.SIGTERM, timeout=12.0)
    took = time.monotonic() - t0
    assert rc == 0, a.log_text()[-3000:]
    if "long" in running:
        assert took >= 1.9, f"exited {took:.1f}s after SIGTERM: it did not wait out the grace"
    assert took < 8.0, f"exited {took:.1f}s after SIGTERM with a 2 s grace"
    a.wait_log(lambda l: l["event"] == "sched.drain", what="sched.drain")
    for s in running:
        wait_gone(ids[s], 3.0, f"{s}'s module after the drain")

    tasks = {t["stage"]: t for t in tasks_of(edb, jid)}
    evs = events(edb, jid)
    for s in running:
        me = module_events(evs, ids[s])
        if me[-1]["kind"] == "job.module.complete":
            continue
        last = me[-1]
        assert (last["kind"], last["reason"], last["status_to"]) == (
            "job.module.retry", "shutdown", "ready"), fmt_event(last)
        assert last["data"].get("retries") == 0, fmt_event(last)
        assert tasks[s]["status"] == "ready" and tasks[s]["retries"] == 0, tasks[s]
        assert [r["outcome"] for r in attempts_of(edb, ids[s])] == ["cancelled"]
    if "long" in running:
        assert tasks["long"]["status"] == "ready", "the 5 s stage finished within a 2 s grace?"
    if "short" in running:
        assert tasks["short"]["status"] == "completed", \
            f"the 1.5 s stage did not finish within the 2 s grace: {tasks['short']}"
    # nothing new was claimed while draining
    for w in waiting:
        assert not module_events(evs, ids[w]), [fmt_event(e) for e in evs]
        assert tasks[w]["status"] == "ready", tasks[w]
    assert edb.one("SELECT status FROM jobs WHERE id = %s", (jid,))["status"] == "running"

    b = start(daemon, edb, pipes, modules=mods, name="after-restart")
    job = wait_job(b, jid, timeout=30, edb=edb)
    assert job["status"] == "completed", job
    evs = check_events(edb, jid, soft=soft)
    for s in job["stages"]:
        assert s["retries"] == 0, s
    if "long" in running:
        assert stage(job, "long")["attempt"] == 2, job
        att = attempts_of(edb, ids["long"])
        assert [(r["outcome"], r["instance_id"]) for r in att] == [
            ("cancelled", a.instance_id), ("completed", b.instance_id)], att
    soft.done()


def test_sigterm_drain_lets_a_finishing_job_complete(daemon, edb):
    """A task that finishes within the grace also finishes its job: the DAG
    step after its commit is part of the drain, so the job is completed
    (job.lifecycle.complete) before the daemon exits, not left running with
    every stage done."""
    soft = Soft()
    pipes = {"one": {"stages": [{"name": "s", "module": "sleep", "params": {"seconds": 1}}]}}
    a = start(daemon, edb, pipes, name="drained", grace="5s")
    jid = submit(a, "one")["id"]
    tid = get_job(a, jid)["stages"][0]["task_id"]
    wait_for(lambda: module_pids(tid), 10.0, 0.02, "the sleep module running")
    t0 = time.monotonic()
    assert a.stop(signal.SIGTERM, timeout=12.0) == 0, a.log_text()[-3000:]
    took = time.monotonic() - t0
    assert took < 4.5, f"exited {took:.1f}s after SIGTERM; the task needed about 1 s"
    row = edb.one("SELECT status FROM tasks WHERE id = %s", (tid,))
    assert row["status"] == "completed", row
    job = edb.one("SELECT status FROM jobs WHERE id = %s", (jid,))
    soft.check(job["status"] == "completed",
               f"the job is {job['status']!r} after the drain although its only stage completed "
               f"(no job.lifecycle.complete before exit)")
    # whatever the drain left, the next instance finishes it, once
    b = start(daemon, edb, pipes, name="next")
    assert wait_job(b, jid, timeout=20, edb=edb)["status"] == "completed"
    check_events(edb, jid, soft=soft)
    assert len(attempts_of(edb, tid)) == 1
    soft.done()


def test_progress_and_current_stage_move(daemon, edb):
    pipes = {"p": {"stages": [
        {"name": "a", "module": "sleep", "params": {"seconds": 3, "tick": 0.1}},
        {"name": "b", "module": "sleep", "needs": ["a"], "params": {"seconds": 1.5}},
    ]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "p")["id"]
    samples = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        j = get_job(d, jid)
        samples.append((j["status"], j["progress"], j["current_stage"],
                        stage(j, "a")["progress"], stage(j, "b")["progress"]))
        if j["status"] in TERMINAL_JOB:
            break
        time.sleep(0.1)
    assert samples[-1][0] == "completed", samples[-5:]
    assert samples[-1][1] == 1, samples[-1]
    progs = [s[1] for s in samples]
    assert all(x <= y for x, y in zip(progs, progs[1:])), f"progress went back: {progs}"
    in_a = sorted({s[1] for s in samples if s[2] == "a" and 0 < s[1] < 0.5})
    assert len(in_a) >= 2, f"progress did not move while a ran: {samples}"
    a_stage = sorted({s[3] for s in samples if s[2] == "a" and 0 < s[3] < 1})
    assert len(a_stage) >= 2, f"stage a's progress did not move: {samples}"
    in_b = [s for s in samples if s[2] == "b"]
    assert in_b and all(0.5 <= s[1] <= 1 for s in in_b), f"while b ran: {samples}"
    assert any(0.5 < s[1] < 1 for s in in_b), f"progress did not move while b ran: {in_b}"
    soft = Soft()
    soft.check(samples[-1][2] is None,
               f"current_stage of the completed job is {samples[-1][2]!r}, want null")
    soft.done()


# --------------------------------------------------------------------------
# retry, resume, the task endpoint


def _echo_chain(names, extra=None):
    stages = []
    prev = None
    for n in names:
        s = {"name": n, "module": "echo"}
        if prev:
            s["needs"] = [prev]
        s.update((extra or {}).get(n, {}))
        stages.append(s)
        prev = n
    return {"stages": stages}


def test_retry_failed_job_reruns_from_first_failed_stage(daemon, edb):
    soft = Soft()
    pipes = {"rt": _echo_chain(["a", "b", "c"], {"b": {"params": {"fail_attempts": 1}}})}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "rt")["id"]
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "failed" and stage(job, "b")["status"] == "failed", job
    assert stage(job, "c")["status"] == "cancelled", job
    a_before = edb.one("SELECT id::text, status, attempt, started_at, completed_at, output "
                       "FROM tasks WHERE job_id = %s AND stage = 'a'", (jid,))
    ids_before = {s["stage"]: s["task_id"] for s in job["stages"]}
    queued_before = edb.one("SELECT queued_at FROM jobs WHERE id = %s", (jid,))["queued_at"]

    st, hd, body, raw = retry_job(d, jid)
    assert st == 202, (st, raw[:500])
    assert hd.get("etag"), hd
    assert body["id"] == jid and body["status"] == "queued" and body["attempt"] == 2, body
    assert body["error"] is None and body["completed_at"] is None, body
    assert {s["stage"]: s["task_id"] for s in body["stages"]} == ids_before, body
    assert stage(body, "a")["status"] == "completed", body
    assert stage(body, "a")["started_at"] == stage(job, "a")["started_at"], body
    assert stage(body, "a")["completed_at"] == stage(job, "a")["completed_at"], body
    assert stage(body, "b")["status"] in ("pending", "ready"), body
    assert stage(body, "c")["status"] == "pending", body
    for n in ("b", "c"):
        s = stage(body, n)
        assert s["error"] is None and s["retries"] == 0 and s["started_at"] is None, s
        assert s["completed_at"] is None and s["progress"] == 0, s
    assert stage(body, "b")["attempt"] == 1, body  # attempt keeps counting over the task's life
    assert edb.one("SELECT queued_at FROM jobs WHERE id = %s", (jid,))["queued_at"] > queued_before

    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "completed" and job["attempt"] == 2 and job["error"] is None, job
    assert stage(job, "b")["attempt"] == 2 and stage(job, "b")["retries"] == 0, job
    evs = check_events(edb, jid, terminals=2, soft=soft)
    retry = [e for e in evs if e["kind"] == "job.lifecycle.retry"]
    assert len(retry) == 1, [fmt_event(e) for e in evs]
    r = retry[0]
    assert (r["status_from"], r["status_to"], r["reason"]) == ("failed", "queued", "requested"), \
        fmt_event(r)
    assert r["data"].get("attempt") == 2 and r["data"].get("from_stage") == "b", fmt_event(r)
    assert r["request_id"], fmt_event(r)
    resets = [e for e in evs if e["kind"] == "job.stage.reset"]
    assert sorted((e["stage"], e["status_from"]) for e in resets) == [
        ("b", "failed"), ("c", "cancelled")], [fmt_event(e) for e in evs]
    assert all(e["txid"] == r["txid"] for e in resets), "the reset is not one transaction"
    assert [e["kind"] for e in evs if e["kind"] in TERMINAL_KINDS] == [
        "job.lifecycle.fail", "job.lifecycle.complete"]
    # a was not run again and kept its output and timestamps
    a_after = edb.one("SELECT id::text, status, attempt, started_at, completed_at, output "
                      "FROM tasks WHERE job_id = %s AND stage = 'a'", (jid,))
    assert a_after == a_before, (a_before, a_after)
    assert len(attempts_of(edb, a_before["id"])) == 1
    assert not [e for e in evs if e["task_id"] == a_before["id"] and e["seq"] > r["seq"]]
    # b ran again with the earlier a's output, c with the new b's
    rows = {t["stage"]: t for t in tasks_of(edb, jid)}
    assert rows["b"]["output"]["attempt"] == 2, rows["b"]
    assert rows["b"]["output"]["inputs"]["a.output"] == a_before["output"], rows["b"]["output"]
    assert rows["c"]["output"]["inputs"]["b.output"] == rows["b"]["output"], rows["c"]["output"]
    assert [r["outcome"] for r in attempts_of(edb, rows["b"]["id"])] == ["error", "completed"]
    stored = read_json_file(os.path.join(store_dir(daemon, jid, 2, "b"), "output.json"))
    assert stored == rows["b"]["output"], stored
    soft.done()


def test_retry_reruns_every_failed_or_cancelled_stage(daemon, edb):
    """x fails (required) while its sibling y runs: the fail-fast stops y
    (cancelled) and z. A retry (from the first failed stage, x) also reruns
    the cancelled y, and z after both; a stays as it was."""
    soft = Soft()
    pipes = {"br": {"stages": [
        {"name": "a", "module": "echo"},
        {"name": "x", "module": "echo", "needs": ["a"], "params": {"fail_attempts": 1}},
        {"name": "y", "module": "sleep", "needs": ["a"], "params": {"seconds": 3}},
        {"name": "z", "module": "echo", "needs": ["x", "y"]},
    ]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jid = submit(d, "br")["id"]
    job = wait_job(d, jid, timeout=20, edb=edb)
    st = {s["stage"]: s["status"] for s in job["stages"]}
    assert st == {"a": "completed", "x": "failed", "y": "cancelled", "z": "cancelled"}, st
    evs = events(edb, jid)
    ycan = [e for e in evs if e["stage"] == "y" and e["kind"] == "job.stage.cancelled"]
    assert ycan and ycan[0]["status_from"] == "running" and ycan[0]["reason"] == "job_failed", \
        [fmt_event(e) for e in evs]
    a_before = edb.one("SELECT status, attempt, started_at, completed_at, output FROM tasks "
                       "WHERE job_id = %s AND stage = 'a'", (jid,))

    st, _, body, raw = retry_job(d, jid)
    assert st == 202, (st, raw[:500])
    assert body["attempt"] == 2 and body["status"] == "queued", body
    assert {s["stage"]: s["status"] for s in body["stages"]}["a"] == "completed", body
    for n in ("x", "y", "z"):
        assert stage(body, n)["status"] in ("pending", "ready"), body
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "completed", job
    assert [stage(job, n)["attempt"] for n in "axyz"] == [1, 2, 2, 1], job  # z never ran before
    evs = check_events(edb, jid, terminals=2, soft=soft)
    r = [e for e in evs if e["kind"] == "job.lifecycle.retry"][0]
    assert r["data"].get("from_stage") == "x", fmt_event(r)
    resets = sorted((e["stage"], e["status_from"]) for e in evs if e["kind"] == "job.stage.reset")
    assert resets == [("x", "failed"), ("y", "cancelled"), ("z", "cancelled")], resets
    assert edb.one("SELECT status, attempt, started_at, completed_at, output FROM tasks "
                   "WHERE job_id = %s AND stage = 'a'", (jid,)) == a_before
    rows = {t["stage"]: t for t in tasks_of(edb, jid)}
    assert rows["z"]["output"]["inputs"]["y.output"] == {"slept": 3}, rows["z"]
    assert [r["outcome"] for r in attempts_of(edb, rows["y"]["id"])] == ["cancelled", "completed"]
    soft.done()


def test_retry_completed_job_from_named_stage(daemon, edb):
    soft = Soft()
    pipes = {"rt": _echo_chain(["a", "b", "c"])}
    d = start(daemon, edb, pipes)
    jid = submit(d, "rt")["id"]
    assert wait_job(d, jid, timeout=20, edb=edb)["status"] == "completed"
    before = {t["stage"]: t for t in tasks_of(edb, jid)}
    st, _, body, raw = retry_job(d, jid, {"from_stage": "b"})
    assert st == 202, (st, raw[:500])
    assert body["status"] == "queued" and body["attempt"] == 2, body
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "completed" and job["attempt"] == 2, job
    after = {t["stage"]: t for t in tasks_of(edb, jid)}
    assert after["a"] == before["a"], (before["a"], after["a"])
    for n in ("b", "c"):
        assert after[n]["attempt"] == 2, after[n]
        assert after[n]["output"]["nonce"] != before[n]["output"]["nonce"], (before[n], after[n])
        assert after[n]["started_at"] > before[n]["completed_at"], (before[n], after[n])
    assert after["c"]["output"]["inputs"]["b.output"] == after["b"]["output"]
    assert after["b"]["output"]["inputs"]["a.output"] == before["a"]["output"]
    evs = check_events(edb, jid, terminals=2, soft=soft)
    r = [e for e in evs if e["kind"] == "job.lifecycle.retry"]
    assert len(r) == 1 and r[0]["status_from"] == "completed", [fmt_event(e) for e in evs]
    assert r[0]["data"].get("from_stage") == "b", fmt_event(r[0])
    resets = [(e["stage"], e["status_from"]) for e in evs if e["kind"] == "job.stage.reset"]
    assert sorted(resets) == [("b", "completed"), ("c", "completed")], resets
    soft.done()


def test_retry_refusals_and_retrying_a_cancelled_job(daemon, edb):
    soft = Soft()
    pipes = {"busy": {"stages": [{"name": "s", "module": "sleep", "params": {"seconds": 30}}]},
             "quick": _echo_chain(["a", "b"])}
    d = start(daemon, edb, pipes, modules={"sleep": {"concurrency": 1}})
    running = submit(d, "busy")["id"]
    wait_for(lambda: get_job(d, running)["status"] == "running", 10.0, 0.05, "running job")
    queued = submit(d, "busy")["id"]  # sleep has one slot, held by the first job
    done = submit(d, "quick")["id"]
    assert wait_job(d, done, timeout=20, edb=edb)["status"] == "completed"
    assert get_job(d, queued)["status"] == "queued"
    try:
        for jid, status in ((running, "running"), (queued, "queued")):
            n = len(events(edb, jid))
            st, hd, _, b = retry_job(d, jid)
            doc = assert_problem(st, hd, b, 409)
            assert doc["type"] == PROBLEM + "job-not-finished", doc
            assert doc.get("job_status") == status, doc
            assert len(events(edb, jid)) == n, doc
        n = len(events(edb, done))
        st, hd, _, b = retry_job(d, done)  # nothing failed or was cancelled
        doc = assert_problem(st, hd, b, 409)
        assert doc["type"] == PROBLEM + "nothing-to-retry", doc
        for body, field in (({"from_stage": "nope"}, "from_stage"),
                            ({"from_stage": 5}, "from_stage"),
                            ({"bogus": 1}, "bogus")):
            st, hd, _, b = retry_job(d, done, body)
            doc = assert_problem(st, hd, b, 422)
            assert field in {e.get("field") for e in doc.get("errors", [])}, (body, doc)
        st, hd, b = d.http("POST", f"/v1/jobs/{done}/retry", body=b"from_stage=a",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert_problem(st, hd, b, 415)
        assert len(events(edb, done)) == n
        assert edb.one("SELECT attempt FROM jobs WHERE id = %s", (done,))["attempt"] == 1
        for jid in (str(uuid.uuid4()), "not-a-uuid"):
            st, hd, _, b = retry_job(d, jid)
            doc = assert_problem(st, hd, b, 404)
            assert doc["type"] == PROBLEM + "not-found", doc

        # a cancelled job can be retried: from its first cancelled stage
        assert d.http("DELETE", f"/v1/jobs/{queued}")[0] == 202
        st, _, body, raw = retry_job(d, queued)
        assert st == 202, (st, raw[:500])
        assert body["status"] == "queued" and body["attempt"] == 2, body
        assert body["stages"][0]["status"] in ("pending", "ready"), body
        evs = events(edb, queued)
        r = [e for e in evs if e["kind"] == "job.lifecycle.retry"]
        assert len(r) == 1 and r[0]["status_from"] == "cancelled", [fmt_event(e) for e in evs]
        assert r[0]["data"].get("from_stage") == "s", fmt_event(r[0])
    finally:
        for jid in (running, queued):
            assert d.http("DELETE", f"/v1/jobs/{jid}")[0] == 202
    for jid in (running, queued):
        wait_job(d, jid, timeout=10, edb=edb)
        check_events(edb, jid, terminals=2 if jid == queued else 1, soft=soft)
    soft.done()


def test_resume_from_reuses_earlier_outputs(daemon, edb):
    soft = Soft()
    pipes = {"rs": _echo_chain(["a", "b", "c", "d"]), "rs2": _echo_chain(["a", "b", "c", "d"])}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    j1 = submit(d, "rs", input={"v": 1})["id"]
    assert wait_job(d, j1, timeout=20, edb=edb)["status"] == "completed"
    earlier = {t["stage"]: t for t in tasks_of(edb, j1)}

    job = submit(d, "rs", input={"v": 2}, extra={"resume_from": {"job_id": j1, "stage": "c"}})
    j2 = job["id"]
    assert j2 != j1
    st = {s["stage"]: (s["status"], s["skip_reason"]) for s in job["stages"]}
    assert st["a"] == ("skipped", "reused") and st["b"] == ("skipped", "reused"), job
    assert st["c"] == ("ready", None) and st["d"] == ("pending", None), job
    job = wait_job(d, j2, timeout=20, edb=edb)
    assert job["status"] == "completed" and job["progress"] == 1, job
    evs = check_events(edb, j2, soft=soft)
    assert [(e["kind"], e["stage"], e["reason"]) for e in evs[:4]] == [
        ("job.lifecycle.enqueue", None, "submitted"), ("job.stage.skipped", "a", "reused"),
        ("job.stage.skipped", "b", "reused"), ("job.stage.ready", "c", "no_dependencies")] or \
        [(e["kind"], e["stage"]) for e in evs[:4]] == [
        ("job.lifecycle.enqueue", None), ("job.stage.skipped", "a"), ("job.stage.skipped", "b"),
        ("job.stage.ready", "c")], [fmt_event(e) for e in evs]
    for n in ("a", "b"):
        s = stage(job, n)
        assert (s["status"], s["skip_reason"]) == ("skipped", "reused"), s
        ev = [e for e in evs if e["task_id"] == s["task_id"]]
        assert [(e["kind"], e["reason"]) for e in ev] == [("job.stage.skipped", "reused")], \
            [fmt_event(e) for e in ev]
        assert not attempts_of(edb, s["task_id"])
    later = {t["stage"]: t for t in tasks_of(edb, j2)}
    # c read b's output from the earlier job, and this job's own input
    assert later["c"]["output"]["inputs"]["b.output"] == earlier["b"]["output"], later["c"]
    assert later["c"]["output"]["inputs"]["input.json"] == {"v": 2}, later["c"]
    assert later["d"]["output"]["inputs"]["c.output"] == later["c"]["output"], later["d"]
    assert later["c"]["output"]["nonce"] != earlier["c"]["output"]["nonce"]
    # the earlier job is untouched
    assert {t["stage"]: t for t in tasks_of(edb, j1)} == earlier

    def refused(body, status):
        st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})
        return assert_problem(st, hd, b, status)

    for rf, field in (({"job_id": j1, "stage": "zz"}, "resume_from.stage"),
                      ({"job_id": "nope", "stage": "c"}, "resume_from.job_id"),
                      ({"job_id": j1}, "resume_from.stage"),
                      ({"job_id": j1, "stage": "c", "x": 1}, "resume_from.x"),
                      ("c", "resume_from")):
        doc = refused({"pipeline": "rs", "resume_from": rf}, 422)
        assert field in {e.get("field") for e in doc.get("errors", [])}, (rf, doc)
    doc = refused({"pipeline": "rs2", "resume_from": {"job_id": j1, "stage": "c"}}, 422)
    assert doc.get("errors"), doc
    doc = refused({"pipeline": "rs", "resume_from": {"job_id": str(uuid.uuid4()), "stage": "c"}},
                  404)
    assert doc["type"] == PROBLEM + "not-found", doc
    # an earlier job whose a failed (so b was cancelled): neither can be reused
    jf = submit(d, "rs", params={"fail_attempts": 1})["id"]
    assert wait_job(d, jf, timeout=20, edb=edb)["status"] == "failed"
    doc = refused({"pipeline": "rs", "resume_from": {"job_id": jf, "stage": "c"}}, 409)
    assert doc["type"] == PROBLEM + "resume-not-possible", doc
    assert sorted(doc.get("stages") or []) == ["a", "b"], doc
    # resuming from its first stage reuses nothing: allowed
    j3 = submit(d, "rs", extra={"resume_from": {"job_id": jf, "stage": "a"}})
    assert all(s["skip_reason"] is None for s in j3["stages"]), j3
    assert wait_job(d, j3["id"], timeout=20, edb=edb)["status"] == "completed"
    assert edb.one("SELECT count(*) AS n FROM jobs")["n"] == 4
    soft.done()


def project_keys(url, projects, scopes="jobs:read,jobs:write"):
    """Creates each project with the CLI and a key of scopes for it; the
    Authorization headers by project."""
    keys = {}
    for p in projects:
        stageline_db(url, "projects", "create", p, "--name", p.title())
        keys[p] = {"Authorization": "Bearer " + stageline_db(
            url, "keys", "create", "--project", p, "--scopes", scopes)}
    return keys


def test_resume_from_another_projects_job_is_404(daemon, edb, pg):
    pipes = {"rs": _echo_chain(["a", "b"])}
    d = start(daemon, edb, pipes, auth=True)
    url = pg.url(dbname=edb.name)
    keys = project_keys(url, ("alpha", "beta"))
    j1 = submit(d, "rs", headers=keys["alpha"])["id"]

    def done():
        st, _, b = d.http("GET", f"/v1/jobs/{j1}", headers=keys["alpha"])
        return st == 200 and json.loads(b)["status"] == "completed"

    wait_for(done, 20.0, 0.05, "alpha's job to complete")
    body = {"pipeline": "rs", "resume_from": {"job_id": j1, "stage": "b"}}
    st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps(body),
                       headers={"Content-Type": "application/json", **keys["beta"]})
    assert_problem(st, hd, b, 404)
    j2 = submit(d, "rs", headers=keys["alpha"], extra={"resume_from": {"job_id": j1,
                                                                       "stage": "b"}})
    assert stage(j2, "a")["skip_reason"] == "reused", j2
    assert edb.one("SELECT count(*) AS n FROM jobs WHERE project_id = 'beta'")["n"] == 0


def test_task_endpoint_lists_attempts(daemon, edb):
    pipes = {"t": {"stages": [{"name": "f", "module": "flaky", "retries": 3, "backoff": "50ms",
                               "params": {"failures": 2}}]},
             "u": {"stages": [{"name": "x", "module": "echo"}]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "t")["id"]
    other = submit(d, "u")["id"]
    job = wait_job(d, jid, timeout=20, edb=edb)
    assert job["status"] == "completed", job
    wait_job(d, other, timeout=20, edb=edb)
    f = job["stages"][0]
    st, hd, b = d.http("GET", f"/v1/jobs/{jid}/tasks/{f['task_id']}")
    assert st == 200, (st, b[:500])
    doc = json.loads(b)
    clock = {"wait_ms", "duration_ms"}
    assert doc.get("job_id") == jid, doc
    assert {k: v for k, v in doc.items() if k not in clock | {"attempts", "job_id", "files"}} == \
        {k: v for k, v in f.items() if k not in clock}, (doc, f)
    assert doc["files"] == [], doc["files"]  # flaky declares no files
    att = doc["attempts"]
    assert [(a["attempt"], a["outcome"]) for a in att] == [(1, "error"), (2, "error"),
                                                          (3, "completed")], att
    fields = {"attempt", "instance_id", "pid", "started_at", "ended_at", "outcome", "exit_code",
              "signal", "error", "wait_ms", "fetch_ms", "run_ms", "upload_ms", "cpu_seconds",
              "max_rss_bytes"}
    for a in att:
        assert fields <= set(a), sorted(fields - set(a))
        assert a["instance_id"] == d.instance_id and isinstance(a["pid"], int) and a["pid"] > 0, a
        assert ts(a["ended_at"]) >= ts(a["started_at"]), a
        assert a["exit_code"] == 0 and a["signal"] is None, a
        for k in ("wait_ms", "fetch_ms", "run_ms", "upload_ms", "max_rss_bytes"):
            assert isinstance(a[k], int) and a[k] >= 0, (k, a)
        assert isinstance(a["cpu_seconds"], (int, float)) and a["cpu_seconds"] >= 0, a
    assert att[0]["error"]["code"] == "FLAKY" and att[2]["error"] is None, att
    assert ts(att[0]["ended_at"]) <= ts(att[1]["started_at"]), att
    # unknown task, another job's task, a malformed id: 404
    other_task = get_job(d, other)["stages"][0]["task_id"]
    for path in (f"/v1/jobs/{jid}/tasks/{uuid.uuid4()}", f"/v1/jobs/{jid}/tasks/{other_task}",
                 f"/v1/jobs/{jid}/tasks/nope", f"/v1/jobs/{uuid.uuid4()}/tasks/{f['task_id']}"):
        st, hd, b = d.http("GET", path)
        assert_problem(st, hd, b, 404)


# --------------------------------------------------------------------------
# the demo the quickstart runs


def _speech_tools_missing():
    import shutil
    miss = [t for t in ("espeak-ng", "sox", "pocketsphinx_continuous") if shutil.which(t) is None]
    if not os.path.exists("/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict"):
        miss.append("pocketsphinx-en-us")
    return miss


def run_speech_demo(d):
    """One speech-demo job, waited for: it must complete."""
    job = submit(d, "speech-demo", params={"speed": 160},
                 input={"text": "Every stage of this pipeline runs in its own process."})
    done = wait_job(d, job["id"], timeout=120.0)
    assert done["status"] == "completed", json.dumps(done, indent=1)[:3000]
    return done


@pytest.mark.skipif(bool(_speech_tools_missing()), reason="speech tools not installed")
def test_speech_demo_runs_end_to_end_with_the_quickstart_config(daemon, edb, tmp_path):
    """contrib/demo.yaml as the quickstart runs it (settings from STAGELINE_*
    variables): the speech-demo job completes every stage, its parallel
    branches overlap, and each stage's files are in the store."""
    port = free_port()
    d = start_demo(daemon, "demo", port, {
        "STAGELINE_SERVER_LISTEN": f"127.0.0.1:{port}",
        "STAGELINE_DATABASE_URL": daemon.pg.url(dbname=edb.name),
        "STAGELINE_STORE_PATH": str(tmp_path / "objects"),
        "STAGELINE_SCHEDULER_SCRATCH_DIR": str(tmp_path / "scratch"),
        "STAGELINE_AUTH_ENABLED": "false",
        "STAGELINE_SERVER_SHUTDOWN_GRACE": "5s",
    }, edb)
    done = run_speech_demo(d)
    stages = {s["stage"]: s for s in done["stages"]}
    assert all(s["status"] == "completed" for s in stages.values()), stages
    assert done["progress"] == 1.0 and done["current_stage"] is None
    # align, transcribe and audio-stats run side by side once normalize is done
    starts = {n: stages[n]["started_at"] for n in ("align", "transcribe", "audio-stats")}
    ends = {n: stages[n]["completed_at"] for n in ("align", "transcribe", "audio-stats")}
    assert max(starts.values()) < min(ends.values()), (starts, ends)
    base = tmp_path / "objects" / "default" / done["id"]
    for rel in ("01_tts/speech.wav", "02_normalize/audio16k.wav", "03_align/alignment.json",
                "04_transcribe/transcript.txt", "05_audio-stats/stats.json",
                "06_subtitles/subtitles.srt", "07_report/report.json", "07_report/output.json",
                "03_align/stage.log", "01_tts/input.json"):
        assert (base / rel).is_file(), rel
    report = json.loads((base / "07_report" / "output.json").read_text())
    assert report["coverage"] > 0.8, report
    srt = (base / "06_subtitles" / "subtitles.srt").read_text()
    assert "-->" in srt


def test_stage_log_endpoint(daemon, edb):
    """GET /v1/jobs/{id}/tasks/{task_id}/logs: the stored stage.log of a stage
    that ran (the reference's line shape and the module's own lines), the
    log so far of a stage running here, 404 for one that has not run."""
    pipes = {"p": {"stages": [
        {"name": "f", "module": "flaky", "params": {"failures": 1}, "retries": 1,
         "backoff": "50ms"},
        {"name": "s", "module": "sleep", "needs": ["f"], "params": {"seconds": 30}},
        {"name": "z", "module": "echo", "needs": ["s"]},
    ]}}
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE])
    jid = submit(d, "p")["id"]
    wait_for(lambda: get_job(d, jid)["stages"][1]["status"] == "running", 20.0, 0.05,
             "the sleep stage running")
    f, s, z = get_job(d, jid)["stages"]
    st, hd, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{f['task_id']}/logs")
    assert st == 200 and hd["content-type"].startswith("text/plain"), (st, body[:300])
    text = body.decode()
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[f\] \[INFO\] Stage f: "
                     r"STARTING$", text, re.M), text
    assert re.search(r"\[f\] \[INFO\] Stage f: COMPLETED \(\d+\.\ds\)$", text, re.M), text
    # the latest attempt's log (the first one failed on purpose)
    st, _, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{s['task_id']}/logs")
    assert st == 200 and "Stage s: STARTING" in body.decode(), body[:300]
    st, hd, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{z['task_id']}/logs")
    assert st == 404 and json.loads(body)["type"].endswith(":not-found"), body
    st, _, _ = d.http("GET", f"/v1/jobs/{jid}/tasks/01a20000-0000-7000-8000-000000000000/logs")
    assert st == 404
    assert d.http("DELETE", f"/v1/jobs/{jid}")[0] == 202
    wait_job(d, jid)


def test_declared_files_reach_dependents_and_the_task_lists_them(daemon, edb, tmp_path):
    """A module's output artifact is stored under NN_<stage>/, handed to the
    stages that need it as an input (its name, type, format and content),
    and listed in the task's `files`."""
    pipes = {"p": {"stages": [
        {"name": "make", "module": "echo", "params": {"artifact": "note"}},
        {"name": "use", "module": "echo", "needs": ["make"]},
    ]}}
    d = start(daemon, edb, pipes)
    jid = submit(d, "p")["id"]
    job = wait_job(d, jid)
    assert job["status"] == "completed", job
    make, use = job["stages"]
    st, _, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{make['task_id']}")
    assert st == 200
    files = json.loads(body)["files"]
    assert files == [{"name": "note", "type": "text", "format": "txt", "role": "output",
                      "size_bytes": len("make wrote this\n")}], files
    st, _, body = d.http("GET", f"/v1/jobs/{jid}/tasks/{use['task_id']}")
    assert json.loads(body)["files"] == []
    stored = os.path.join(os.path.dirname(d.cfg_path), "var", "objects", "default", jid,
                          "01_make", "note.txt")
    with open(stored) as f:
        assert f.read() == "make wrote this\n"
    out = edb.one("SELECT output FROM tasks WHERE id = %s", (use["task_id"],))["output"]
    assert out["inputs"]["note"] == {"bytes": 16, "sha256": hashlib.sha256(
        b"make wrote this\n").hexdigest()}, out["inputs"]
    assert "make.output" in out["inputs"] and "input.json" in out["inputs"], out["inputs"]
