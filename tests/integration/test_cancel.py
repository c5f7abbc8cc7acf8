"""DELETE /v1/jobs/{id}: cancelling goes through job_set_status and
task_set_status, so this is where their batch, fence and gapless-seq rules
are seen end to end: the job and its unstarted stages move in one
transaction, each applied change gets the next event number, a concurrent
or repeated cancel changes nothing twice, and a finished job refuses."""

import concurrent.futures
import json
import subprocess

import pytest

from slhelpers import wait_for

DBNAME = "canceltest"
PROBLEM = "urn:stageline:problem:"

PIPELINE = """\
stages:
  - {name: a, module: noop}
  - {name: b, module: noop, needs: [a]}
  - {name: c, module: noop, needs: [a], required: false}
  - {name: d, module: noop, needs: [b, c]}
"""


def psql(pg, sql):
    r = subprocess.run(["psql", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", DBNAME,
                        "-v", "ON_ERROR_STOP=1", "-XAtc", sql], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def cd(daemon, pg, tmp_path):
    pg.psql(f"DROP DATABASE IF EXISTS {DBNAME}")
    pg.psql(f"CREATE DATABASE {DBNAME}")
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "demo.yaml").write_text(PIPELINE)
    d = daemon({"database.url": pg.url(dbname=DBNAME), "auth.enabled": False,
                "modules.noop.command": ["/bin/true"], "pipelines_dir": str(pipes),
                "scheduler.enabled": False},
               wait_ready=True)
    wait_for(lambda: psql(pg, "SELECT 1 FROM projects WHERE id = 'default'").strip(),
             10.0, 0.05, "the default project")
    return d


def create(d):
    st, h, body = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "demo"}),
                         headers={"Content-Type": "application/json"})
    assert st == 201, body
    return json.loads(body)


def events(pg, job_id):
    rows = psql(pg, f"SELECT seq, kind, coalesce(stage, ''), status_from, status_to "
                    f"FROM job_events WHERE job_id = '{job_id}' ORDER BY seq")
    return [tuple(r.split("|")) for r in rows.strip().splitlines()]


def test_cancel_moves_job_and_unstarted_stages_with_gapless_events(cd, pg):
    job = create(cd)
    st, h, body = cd.http("DELETE", f"/v1/jobs/{job['id']}")
    assert st == 202, body
    got = json.loads(body)
    assert got["status"] == "cancelled" and got["completed_at"]
    assert [s["status"] for s in got["stages"]] == ["cancelled"] * 4
    assert h.get("etag") == '"2"'
    ev = events(pg, job["id"])
    assert [int(e[0]) for e in ev] == list(range(1, 8)), ev
    assert ev[2][1:] == ("job.lifecycle.cancel", "", "queued", "cancelled")
    assert sorted(e[2] for e in ev[3:]) == ["a", "b", "c", "d"]
    assert all(e[1] == "job.stage.cancelled" for e in ev[3:])
    assert {e[3] for e in ev[3:]} == {"ready", "pending"}
    assert psql(pg, f"SELECT status, event_seq, rev, cancel_requested FROM jobs "
                    f"WHERE id = '{job['id']}'").strip() == "cancelled|7|2|t"
    line = cd.wait_log(lambda ln: ln["event"] == "job.lifecycle.cancel", 5.0, "cancel line")
    for f in ("job_id", "project_id", "pipeline", "status_from", "status_to", "reason",
              "duration_ms", "tasks_total", "tasks_completed", "tasks_failed", "tasks_running"):
        assert f in line, (f, line)
    assert line["status_from"] == "queued" and line["tasks_total"] == 4
    # the GET that follows sees the same revision
    st, h2, _ = cd.http("GET", f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"2"'})
    assert st == 304


def test_cancel_is_idempotent_and_concurrent_cancels_apply_once(cd, pg):
    job = create(cd)
    path = f"/v1/jobs/{job['id']}"
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        results = list(ex.map(lambda _: cd.http("DELETE", path)[0], range(10)))
    assert results == [202] * 10
    assert cd.http("DELETE", path)[0] == 202
    kinds = [e[1] for e in events(pg, job["id"])]
    assert kinds.count("job.lifecycle.cancel") == 1
    assert kinds.count("job.stage.cancelled") == 4
    assert len(kinds) == 7


def test_finished_job_refuses_and_unknown_is_404(cd, pg):
    job = create(cd)
    psql(pg, f"UPDATE jobs SET status = 'completed' WHERE id = '{job['id']}'")
    st, h, body = cd.http("DELETE", f"/v1/jobs/{job['id']}")
    assert st == 409, body
    doc = json.loads(body)
    assert h["content-type"] == "application/problem+json"
    assert doc["type"] == PROBLEM + "job-finished" and doc["job_status"] == "completed"
    assert len(events(pg, job["id"])) == 2  # nothing written
    for path in ("/v1/jobs/0190b5a0-0000-7000-8000-000000000000", "/v1/jobs/not-a-uuid"):
        st, _, body = cd.http("DELETE", path)
        assert st == 404 and json.loads(body)["type"] == PROBLEM + "not-found"


def test_other_instances_see_the_change_no_stale_304(cd, daemon, pg, tmp_path):
    """B answers conditional GETs from its revision cache; a cancel made on
    A must reach B through NOTIFY, so B never keeps answering 304 for a
    revision that is gone."""
    pipes = tmp_path / "pipelines"
    b = daemon({"database.url": pg.url(dbname=DBNAME), "auth.enabled": False,
                "modules.noop.command": ["/bin/true"], "pipelines_dir": str(pipes),
                "scheduler.enabled": False},
               wait_ready=True)
    job = create(cd)
    path = f"/v1/jobs/{job['id']}"
    st, h, _ = b.http("GET", path)
    assert st == 200 and h["etag"] == '"1"'
    assert b.http("GET", path, headers={"If-None-Match": '"1"'})[0] == 304
    assert cd.http("DELETE", path)[0] == 202
    wait_for(lambda: b.http("GET", path, headers={"If-None-Match": '"1"'})[0] == 200, 5.0,
             0.05, "B sees the new revision")
    st, h, body = b.http("GET", path)
    assert json.loads(body)["status"] == "cancelled" and h["etag"] == '"2"'


def metrics(d):
    st, _, body = d.http("GET", "/metrics.json")
    assert st == 200
    return json.loads(body)


def test_job_metrics_move_by_exact_deltas(cd):
    """jobs.created_total, jobs.status_transition_total{from,to} and
    jobs.total_latency_ms follow the jobs one for one."""
    m1 = metrics(cd)
    jobs = [create(cd) for _ in range(3)]
    assert cd.http("DELETE", f"/v1/jobs/{jobs[0]['id']}")[0] == 202
    assert cd.http("DELETE", f"/v1/jobs/{jobs[0]['id']}")[0] == 202  # idempotent: no new transition
    m2 = metrics(cd)

    def delta(kind, key):
        return m2[kind].get(key, 0) - m1[kind].get(key, 0)

    assert delta("counters", "jobs.created_total") == 3
    assert delta("counters", "jobs.status_transition_total|from=pending,to=queued") == 3
    assert delta("counters", "jobs.status_transition_total|from=queued,to=cancelled") == 1
    h1 = m1["histograms"].get("jobs.total_latency_ms", {"count": 0})
    h2 = m2["histograms"]["jobs.total_latency_ms"]
    assert h2["count"] - h1["count"] == 1
