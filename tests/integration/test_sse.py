"""Live job events over Server-Sent Events (GET /v1/jobs/{id}/events,
ARCHITECTURE §8, docs/api.md): the full event order of a job as a client
sees it, resume after a disconnect at every event (no gap, no duplicate),
Last-Event-ID values the server cannot honour, events made by another
instance, progress events, a slow client dropped while the others carry on,
and 10,000 connect/disconnect cycles without a leak. Uses the real daemon
and the engine test helpers (test_engine.py)."""

import http.client
import json
import os
import socket
import time

import pytest

from slhelpers import wait_for
from test_engine import edb, get_job, start, submit, wait_job  # noqa: F401 (edb is a fixture)

PIPES = {
    "three": {"stages": [
        {"name": "a", "module": "echo"},
        {"name": "b", "module": "echo", "needs": ["a"]},
        {"name": "c", "module": "echo", "needs": ["b"]},
    ]},
    "slow": {"stages": [
        {"name": "s", "module": "sleep", "params": {"seconds": 1.5, "tick": 0.02}},
        {"name": "t", "module": "echo", "needs": ["s"]},
    ]},
    "flood": {"stages": [
        {"name": "f", "module": "flood", "params": {"stdout_mb": 2, "stderr_mb": 6}},
    ]},
}


class Stream:
    """A minimal EventSource: reads `id`, `event`, `data` fields until the
    server closes or max_events arrive."""

    def __init__(self, d, job_id, last_id=None, query="", timeout=20.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
        h = {"Accept": "text/event-stream"}
        if last_id is not None:
            h["Last-Event-ID"] = str(last_id)
        self.conn.request("GET", f"/v1/jobs/{job_id}/events{query}", headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = dict(self.resp.getheaders())

    def events(self, max_events=None, until_end=True):
        out, cur = [], {}
        while max_events is None or len(out) < max_events:
            line = self.resp.fp.readline()
            if not line:
                break
            line = line.decode("utf-8").rstrip("\n")
            if line == "":
                if "event" in cur or "data" in cur:
                    ev = {"id": int(cur["id"]) if "id" in cur else None,
                          "event": cur.get("event", "message"),
                          "data": json.loads(cur["data"]) if "data" in cur else None}
                    out.append(ev)
                    if until_end and ev["event"] == "end":
                        break
                cur = {}
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            cur[k] = v[1:] if v.startswith(" ") else v
        return out

    def close(self):
        self.conn.close()


def durable(evs):
    return [e for e in evs if e["id"] is not None]


def db_events(edb, job_id):
    return [(r["seq"], r["kind"]) for r in
            edb.all("SELECT seq, kind FROM job_events WHERE job_id = %s ORDER BY seq", (job_id,))]


def test_full_event_order_then_snapshot_then_end(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "three", input={"x": 1})
    s = Stream(d, job["id"])
    assert s.status == 200
    assert s.headers["Content-Type"] == "text/event-stream"
    evs = s.events()
    s.close()
    assert evs[-1]["event"] == "end" and evs[-1]["data"]["status"] == "completed"
    snaps = [i for i, e in enumerate(evs) if e["event"] == "snapshot"]
    assert len(snaps) == 1
    ids = [e["id"] for e in durable(evs)]
    rows = db_events(edb, job["id"])
    assert ids == [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert [e["data"]["kind"] for e in durable(evs)] == [r[1] for r in rows]
    for e in durable(evs):
        want = "lifecycle" if e["data"]["kind"].startswith("job.lifecycle.") else "stage"
        assert e["event"] == want, e
        assert e["data"]["seq"] == e["id"] and e["data"]["job_id"] == job["id"]
    # the snapshot is the job as GET shows it, after what was replayed
    snap = evs[snaps[0]]["data"]
    assert snap["id"] == job["id"] and "stages" in snap
    assert snap["event_seq"] >= max(e["id"] for e in durable(evs[:snaps[0]]) or [{"id": 0}])


def test_resume_at_every_event_no_gap_no_duplicate(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "three")
    wait_job(d, job["id"])
    n = len(db_events(edb, job["id"]))
    for k in range(0, n + 1):
        s = Stream(d, job["id"], last_id=k)
        evs = s.events()
        s.close()
        assert [e["id"] for e in durable(evs)] == list(range(k + 1, n + 1)), k
        assert [e["event"] for e in evs[-2:]] == ["snapshot", "end"], k
    # the query parameter works like the header
    s = Stream(d, job["id"], query=f"?last_event_id={n - 1}")
    assert [e["id"] for e in durable(s.events())] == [n]
    s.close()


def test_live_resume_after_a_forced_disconnect(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "slow")
    seen = []
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = Stream(d, job["id"], last_id=last)
        evs = s.events(max_events=3)
        s.close()  # a disconnect in the middle of the stream
        got = durable(evs)
        seen += [e["id"] for e in got]
        if got:
            last = got[-1]["id"]
        if any(e["event"] == "end" for e in evs):
            break
    rows = db_events(edb, job["id"])
    assert seen == [r[0] for r in rows], (seen, rows)


def test_progress_events_are_live_and_coalesced(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "slow")
    s = Stream(d, job["id"])
    t0 = time.monotonic()
    evs = s.events()
    dt = time.monotonic() - t0
    s.close()
    prog = [e for e in evs if e["event"] == "progress"]
    assert prog, [e["event"] for e in evs]
    assert all(e["id"] is None for e in prog)
    assert all(0 <= e["data"]["data"]["progress"] <= 1 and e["data"]["stage"] == "s" for e in prog)
    # the module reports every 20 ms; at most 10 per second reach the stream
    assert len(prog) <= 10 * dt + 2, (len(prog), dt)


def test_last_event_id_it_cannot_honour_resets(daemon, edb):
    d = start(daemon, edb, PIPES)
    job = submit(d, "three")
    wait_job(d, job["id"])
    n = len(db_events(edb, job["id"]))
    for bad, reason in ((n + 5, "unknown_event_id"), ("abc", "invalid_last_event_id")):
        s = Stream(d, job["id"], last_id=bad)
        evs = s.events()
        s.close()
        assert [e["event"] for e in evs] == ["reset", "snapshot", "end"], evs
        assert evs[0]["data"]["reason"] == reason


def test_unknown_job_is_404_and_other_errors(daemon, edb):
    d = start(daemon, edb, PIPES)
    st, h, b = d.http("GET", "/v1/jobs/01a20000-0000-7000-8000-000000000000/events")
    assert st == 404 and json.loads(b)["type"].endswith(":not-found")
    st, h, b = d.http("GET", "/v1/jobs/not-a-uuid/events")
    assert st == 404
    st, h, b = d.http("POST", "/v1/jobs/01a20000-0000-7000-8000-000000000000/events", body=b"")
    assert st == 405


def test_events_from_another_instance_arrive(daemon, edb):
    worker = start(daemon, edb, PIPES, name="worker")
    api = start(daemon, edb, PIPES, name="api", scheduler={"enabled": False})
    job = submit(api, "slow")
    s = Stream(api, job["id"])
    evs = s.events()
    s.close()
    assert evs[-1]["event"] == "end" and evs[-1]["data"]["status"] == "completed"
    rows = db_events(edb, job["id"])
    assert [e["id"] for e in durable(evs)] == [r[0] for r in rows]
    assert worker.running()


def test_slow_client_is_dropped_and_others_carry_on(daemon, edb):
    d = start(daemon, edb, PIPES, modules={"flood": {"timeout": "60s"}})
    job = submit(d, "flood")
    # a client that never reads, with a small receive buffer
    slow = socket.create_connection(("127.0.0.1", d.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(f"GET /v1/jobs/{job['id']}/events?logs=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # a client that reads everything but the log flood carries on to the end
    good = Stream(d, job["id"], timeout=60.0)
    evs = good.events()
    good.close()
    assert evs[-1]["event"] == "end", evs[-3:]
    assert evs[-1]["data"]["status"] == "completed"
    d.wait_log(lambda l: l["event"] == "sse.dropped", timeout=10.0, what="sse.dropped")
    # the slow client's connection was closed by the server
    slow.settimeout(10)
    total = 0
    while True:
        chunk = slow.recv(65536)
        if not chunk:
            break
        total += len(chunk)
    slow.close()
    assert total > 0
    st, _, b = d.http("GET", "/metrics.json")
    m = json.loads(b)
    assert any(k.startswith("sse.clients_dropped_total") and v >= 1
               for k, v in m["counters"].items()), m["counters"]


def test_connect_disconnect_cycles_leak_nothing(daemon, edb):
    d = start(daemon, edb, {"long": {"stages": [
        {"name": "s", "module": "sleep", "params": {"seconds": 600, "tick": 1}}]}})
    job = submit(d, "long")
    pid = d.proc.pid

    def fds():
        return len(os.listdir(f"/proc/{pid}/fd"))

    # the module runs (its pipes are open) before the count is taken
    wait_for(lambda: get_job(d, job["id"])["stages"][0]["status"] == "running", 20.0, 0.05,
             "the sleep stage running")
    before = fds()
    for i in range(10000):
        c = socket.create_connection(("127.0.0.1", d.port))
        c.sendall(f"GET /v1/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if i % 2:
            c.recv(100)  # some leave after the head, some before
        c.close()
    assert d.http("DELETE", f"/v1/jobs/{job['id']}")[0] == 202
    wait_job(d, job["id"])

    def settled():
        st, _, b = d.http("GET", "/metrics.json")
        return json.loads(b)["gauges"].get("sse.streams_open", 0) == 0
    wait_for(settled, 10.0, 0.1, "every stream closed")
    assert fds() <= before + 3, (before, fds())


# --------------------------------------------------------------------------
# the project stream: GET /v1/events


class ProjectStream(Stream):
    def __init__(self, d, last_id=None, timeout=10.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout)
        h = {"Accept": "text/event-stream"}
        if last_id is not None:
            h["Last-Event-ID"] = str(last_id)
        self.conn.request("GET", "/v1/events", headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def read_until(self, pred, timeout=20.0):
        """Events until pred(events) holds (the stream never ends by itself)."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not pred(out):
            got = self.events(max_events=1, until_end=False)
            if not got:
                break
            out += got
        return out


def project_rows(edb):
    return [(r["id"], r["job_id"], r["seq"]) for r in edb.all(
        "SELECT id, job_id::text, seq FROM job_events WHERE project_id = 'default' "
        "ORDER BY txid, id")]


def test_project_stream_all_jobs_in_commit_order_and_resume(daemon, edb):
    d = start(daemon, edb, PIPES)
    s = ProjectStream(d)
    assert s.status == 200  # the stream starts at "now", fixed before the head
    jobs = [submit(d, "three")["id"] for _ in range(4)]
    for j in jobs:
        wait_job(d, j)
    want = project_rows(edb)
    evs = s.read_until(lambda out: len(durable(out)) >= len(want))
    s.close()
    got = [(e["id"], e["data"]["job_id"], e["data"]["seq"]) for e in durable(evs)]
    assert got == want, (got[:5], want[:5])
    # each job's own events arrive in seq order, with nothing missing
    for j in jobs:
        seqs = [e["data"]["seq"] for e in durable(evs) if e["data"]["job_id"] == j]
        assert seqs == list(range(1, len(seqs) + 1)), (j, seqs)
    # resume after every k-th event: exactly the rest, in the same order
    for k in range(0, len(want), 7):
        s = ProjectStream(d, last_id=want[k][0])
        rest = s.read_until(lambda out: len(durable(out)) >= len(want) - k - 1, timeout=10)
        s.close()
        assert [e["id"] for e in durable(rest)] == [w[0] for w in want[k + 1:]], k
    # an id this project never had
    s = ProjectStream(d, last_id=10 ** 12)
    first = s.events(max_events=1, until_end=False)
    s.close()
    assert first and first[0]["event"] == "reset", first


def test_project_stream_sees_other_instances(daemon, edb):
    start(daemon, edb, PIPES, name="worker")
    api = start(daemon, edb, PIPES, name="api", scheduler={"enabled": False})
    s = ProjectStream(api)
    job = submit(api, "three")["id"]
    wait_job(api, job)
    n = len(db_events(edb, job))
    evs = s.read_until(lambda out: len(durable(out)) >= n)
    s.close()
    assert [e["data"]["seq"] for e in durable(evs)] == list(range(1, n + 1))
