"""Per-project quotas (issue "security"): max concurrent running jobs (the
rest wait in queued, and say why), max queued jobs (429), max input size
(413), submissions per second (429 with Retry-After); configured defaults,
STAGELINE_QUOTA_* from the environment, and per-project overrides in the
projects table. Every refusal is problem+json naming the limit, its value
and the current usage, and leaves nothing behind."""

import http.client
import json
import time

from conftest import Daemon, clean_env
from slhelpers import wait_for
from test_engine import (  # noqa: F401  (edb is a fixture)
    project_keys,
    assert_problem,
    edb,
    get_job,
    start,
    submit,
)


def sleeper(seconds):
    return {"stages": [{"name": "s", "module": "echo", "params": {"seconds": seconds}}]}


def jobs_count(edb, project="default"):
    return edb.one("SELECT count(*) AS n FROM jobs WHERE project_id = %s", (project,))["n"]


def test_max_concurrent_jobs_keeps_the_rest_queued_and_says_why(daemon, edb):
    d = start(daemon, edb, {"p": sleeper(1.0)}, config={"quota.max_concurrent_jobs": 2})
    ids = [submit(d, "p")["id"] for _ in range(5)]
    wait_for(lambda: edb.one("SELECT count(*) AS n FROM jobs WHERE status = 'running'")["n"] == 2,
             10, 0.02, "two running jobs")
    seen_max = 0
    queued_seen = None
    deadline = time.time() + 30
    while time.time() < deadline:
        n = edb.one("SELECT count(*) AS n FROM jobs WHERE status = 'running'")["n"]
        seen_max = max(seen_max, n)
        if queued_seen is None:
            for i in ids:
                j = get_job(d, i)
                if j["status"] == "queued":
                    queued_seen = j
                    break
        if all(get_job(d, i)["status"] == "completed" for i in ids):
            break
        time.sleep(0.05)
    assert seen_max == 2, seen_max
    for i in ids:
        assert get_job(d, i)["status"] == "completed"
    q = queued_seen["queue"]
    assert q["blocked_by"] == "quota:max_concurrent_jobs", q
    assert q["position"] >= 1 and q["module"] == "echo" and q["since"].endswith("Z"), q
    assert get_job(d, ids[0])["queue"] is None  # not queued any more


def test_project_override_and_per_project_isolation(daemon, edb, pg):
    d = start(daemon, edb, {"p": sleeper(0.8)}, auth=True)
    url = pg.url(dbname=edb.name)
    keys = project_keys(url, ("alpha", "beta"))
    # alpha may run one job at a time and queue two; beta has no limits
    edb.all("UPDATE projects SET max_concurrent_jobs = 1, max_queued_jobs = 2 "
            "WHERE id = 'alpha' RETURNING id")
    a1 = submit(d, "p", headers=keys["alpha"])["id"]
    a2 = submit(d, "p", headers=keys["alpha"])["id"]
    wait_for(lambda: get_job(d, a1, keys["alpha"])["status"] == "running", 10, 0.02, "a1 runs")
    # a2 waits (one may run), a3 still fits the queue? a2 is the one queued:
    a3 = submit(d, "p", headers=keys["alpha"])["id"]
    st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p"}),
                       headers={**keys["alpha"], "Content-Type": "application/json"})
    doc = assert_problem(st, hd, b, 429)
    assert doc["type"] == "urn:stageline:problem:quota-exceeded"
    assert doc["limit"] == "max_queued_jobs" and doc["value"] == 2 and doc["usage"] == 2, doc
    assert jobs_count(edb, "alpha") == 3  # the refused one left nothing
    # beta runs side by side, unaffected
    b_ids = [submit(d, "p", headers=keys["beta"])["id"] for _ in range(3)]
    wait_for(lambda: edb.one("SELECT count(*) AS n FROM jobs WHERE project_id = 'beta' AND "
                             "status = 'running'")["n"] == 3, 10, 0.02, "beta's 3 running")
    assert get_job(d, a2, keys["alpha"])["queue"]["blocked_by"] == "quota:max_concurrent_jobs"
    # the SSE snapshot of a waiting job says why, too
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.request("GET", f"/v1/jobs/{a2}/events",
                 headers={"Accept": "text/event-stream", **keys["alpha"]})
    resp = conn.getresponse()
    assert resp.status == 200
    snap = None
    cur = {}
    while snap is None:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            cur["event"] = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and cur.get("event") == "snapshot":
            snap = json.loads(line.split(":", 1)[1])
    conn.close()
    assert "queue" in snap, snap
    if snap["status"] == "queued":  # (a1 may have finished meanwhile)
        assert snap["queue"]["blocked_by"] == "quota:max_concurrent_jobs", snap
    wait_for(lambda: all(get_job(d, i, keys["alpha"])["status"] == "completed"
                         for i in (a1, a2, a3)), 30, 0.1, "alpha's jobs done one by one")
    for i in b_ids:
        wait_for(lambda: get_job(d, i, keys["beta"])["status"] == "completed", 30, 0.1, "beta")
    starts = sorted((get_job(d, i, keys["alpha"])["started_at"],
                     get_job(d, i, keys["alpha"])["completed_at"]) for i in (a1, a2, a3))
    for (s1, e1), (s2, _) in zip(starts, starts[1:]):
        assert s2 >= e1, starts  # never two of alpha's at once


def test_max_input_bytes_is_413_with_the_limit(daemon, edb):
    d = start(daemon, edb, {"p": sleeper(0)}, config={"quota.max_input_bytes": 200})
    ok = submit(d, "p", input={"x": "a" * 10})
    assert ok["id"]
    body = json.dumps({"pipeline": "p", "input": {"x": "a" * 300}})
    st, hd, b = d.http("POST", "/v1/jobs", body=body, headers={"Content-Type": "application/json"})
    doc = assert_problem(st, hd, b, 413)
    assert doc["type"] == "urn:stageline:problem:input-too-large"
    assert doc["limit"] == "max_input_bytes" and doc["value"] == 200
    assert doc["usage"] == len(body.encode())
    assert jobs_count(edb) == 1


def test_submissions_per_second_from_the_environment(daemon, edb, tmp_path):
    """STAGELINE_QUOTA_SUBMISSIONS_PER_SECOND=2: a burst of 2, then 429 with
    Retry-After until a token is back."""
    d0 = start(daemon, edb, {"p": sleeper(0)})
    cfg, argv, port = d0.cfg_path, d0.argv, d0.port
    d0.stop()
    env = clean_env({"STAGELINE_QUOTA_SUBMISSIONS_PER_SECOND": "2"})
    d = Daemon(daemon, "rate", cfg, argv, env, port, (), False)
    daemon.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_ready(timeout=20)
    codes, refusal = [], None
    for _ in range(4):
        st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p"}),
                           headers={"Content-Type": "application/json"})
        codes.append(st)
        if st == 429:
            refusal = (st, hd, b)
    assert codes[:2] == [201, 201] and 429 in codes[2:], codes
    doc = assert_problem(*refusal, 429)
    assert doc["limit"] == "submissions_per_second" and doc["value"] == 2
    assert int(refusal[1]["retry-after"]) >= 1
    assert jobs_count(edb) == codes.count(201)  # nothing of the refused ones
    # a token comes back (2 a second): a submission passes again
    wait_for(lambda: d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p"}),
                            headers={"Content-Type": "application/json"})[0] == 201,
             int(refusal[1]["retry-after"]) + 2, 0.1, "a submission after the refill")


def test_queue_position_counts_up_to_a_bound(daemon, edb):
    """An API-only instance: every job waits. position is the job's place
    among its module's ready tasks, counted up to 100 ahead (101 = further
    back), so reading a job costs the same in a queue of any length."""
    d = start(daemon, edb, {"p": sleeper(0)}, scheduler={"enabled": False})
    ids = [submit(d, "p")["id"] for _ in range(104)]
    qs = [get_job(d, ids[i])["queue"] for i in (0, 2, 99, 100, 103)]
    assert [q["position"] for q in qs] == [1, 3, 100, 101, 101], qs
    assert all(q["blocked_by"] == "capacity:module" and q["module"] == "echo" for q in qs), qs
