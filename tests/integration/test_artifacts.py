"""What the store holds for a job, end to end through the daemon and the file
store (ARCHITECTURE §6; issue "artifacts, stage logs and manifests"):

- the layout: the job's input.json and logs/pipeline.log, per stage
  input.json, output.json, stage.log, manifest.json and declared files;
- manifest.json against proto/manifest.schema.json, with sizes and SHA-256
  checked against the stored bytes; `running` while the module works;
- earlier attempts under NN_<stage>/attempts/<n>/, read with ?attempt=n;
- the artifacts endpoint: inline JSON, signed links that work, then expire,
  tampered links refused, another project's task 404;
- the log endpoints: pipeline.log and stage.log as text, Range, ?follow=1,
  and the stage log flushed to the store while the stage still runs.

The daemons come from test_engine.start (own database per test, JSON config,
post-mortem checks)."""

import hashlib
import json
import os
import re
import socket
import time
import urllib.parse

import jsonschema

from slhelpers import wait_for
from test_engine import (  # noqa: F401  (edb is a fixture)
    project_keys,
    ERR_MODULE,
    assert_problem,
    edb,
    retry_job,
    stage,
    start,
    submit,
    wait_job,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
with open(os.path.join(REPO, "proto", "manifest.schema.json")) as _f:
    MANIFEST_SCHEMA = json.load(_f)
with open(os.path.join(REPO, "tests", "integration", "snapshots",
                       "TaskArtifacts.schema.json")) as _f:
    ARTIFACTS_SNAPSHOT = json.load(_f)
SECRET = "test-url-secret-0123456789abcdef"
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[[^\]]+\] "
                      r"\[(DEBUG|INFO|WARNING|ERROR)\] ")


def echo(**params):
    return {"module": "echo", "params": params}


def pipe(*stages):
    """[(name, needs, params), ...] -> a pipeline of echo stages."""
    return {"stages": [{"name": n, "module": "echo", "needs": needs, "params": p,
                        "retries": p.pop("_retries", 0), "backoff": "100ms"}
                       for n, needs, p in stages]}


def objects_root(daemon):
    return os.path.join(daemon.tmp_path, "var", "objects")


def obj(daemon, *parts):
    return os.path.join(objects_root(daemon), *parts)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def check_manifest(m):
    jsonschema.validate(m, MANIFEST_SCHEMA)
    return m


def check_artifacts(art):
    """A response of the artifacts endpoint against the contract's snapshot."""
    jsonschema.validate(art, ARTIFACTS_SNAPSHOT)
    if art["manifest"] is not None:
        check_manifest(art["manifest"])
    return art


def check_files(daemon, m):
    """Every file a manifest names that the store keeps has that size and hash."""
    n = 0
    for f in m["inputs"] + m["outputs"] + m["intermediate_files"]:
        if f["key"] is None:
            continue
        path = os.path.join(objects_root(daemon), f["key"])
        assert os.path.isfile(path), f
        assert os.path.getsize(path) == f["size_bytes"], f
        assert sha256_file(path) == f["sha256"], f
        n += 1
    return n


def get(d, path, headers=None):
    return d.http("GET", path, headers=headers or {}, timeout=10.0)


def read_stored_json(daemon, *parts):
    with open(obj(daemon, *parts)) as f:
        return json.load(f)


def fetch_url(d, url, headers=None):
    """A signed link: a path on the daemon (the file store)."""
    assert url.startswith("/v1/objects/"), url
    return d.http("GET", url, headers=headers or {}, timeout=10.0)


# --------------------------------------------------------------------------


def test_layout_manifests_hashes_and_pipeline_log(daemon, edb):
    pipes = {"p": pipe(
        ("a", [], {"artifact": "notes", "blob_bytes": 300001, "scratch": "work",
                   "keep_scratch": True, "warn": "low volume", "log_lines": 3}),
        ("b", ["a"], {"scratch": "tmp", "keep_scratch": False}),
    )}
    d = start(daemon, edb, pipes, config={"store.url_secret": SECRET})
    job = submit(d, "p", params={}, input={"hello": "world"})
    jid = job["id"]
    j = wait_job(d, jid, edb=edb)
    assert j["status"] == "completed"
    assert j["logs_key"] == f"default/{jid}/logs/pipeline.log"

    # the job's own files, once the finalizer has run
    wait_for(lambda: os.path.exists(obj(daemon, "default", jid, "logs", "pipeline.log")), 10,
             0.05, "pipeline.log in the store")
    assert read_stored_json(daemon, "default", jid, "input.json") == {"hello": "world"}
    wait_for(lambda: edb.one("SELECT logs_seq = event_seq AS ok FROM jobs WHERE id = %s",
                             (jid,))["ok"], 10, 0.05, "logs_seq recorded")

    for n, name in ((1, "a"), (2, "b")):
        sd = f"{n:02d}_{name}"
        for f in ("input.json", "output.json", "stage.log", "manifest.json"):
            assert os.path.isfile(obj(daemon, "default", jid, sd, f)), (sd, f)
    a = check_manifest(read_stored_json(daemon, "default", jid, "01_a", "manifest.json"))
    b = check_manifest(read_stored_json(daemon, "default", jid, "02_b", "manifest.json"))
    for m, name, n in ((a, "a", 1), (b, "b", 2)):
        assert m["status"] == "success" and m["stage"] == name and m["stage_number"] == n
        assert m["job_id"] == jid and m["task_id"] == stage(j, name)["task_id"]
        assert m["attempt"] == 1 and m["module"] == "echo"
        assert m["instance_id"] == d.instance_id
        assert m["duration_seconds"] >= 0 and m["errors"] == []
        assert m["resources"]["cpu_seconds"] >= 0 and m["resources"]["max_rss_bytes"] > 0
        assert m["resources"]["memory_mb"] > 0
    assert a["config"]["blob_bytes"] == 300001
    # a: job input in, output.json + two declared outputs out, a kept intermediate
    assert [i["path"] for i in a["inputs"]] == ["input.json"]
    outs = {o["name"]: o for o in a["outputs"]}
    assert set(outs) == {"output.json", "notes", "blob"}
    assert outs["blob"]["size_bytes"] == 300001 and outs["blob"]["seed"] == 300001
    assert outs["blob"]["path"] == "01_a/blob.bin" and outs["blob"]["format"] == "bin"
    assert [(x["name"], x["retained"], x["reason"]) for x in a["intermediate_files"]] == \
        [("work", True, "kept for debugging")]
    assert [w["message"] for w in a["warnings"]] == ["low volume"]
    assert check_files(daemon, a) == 4
    # b: a's output.json and files came in; its scratch file was not kept
    assert {i["path"] for i in b["inputs"]} == {"input.json", "01_a/output.json",
                                                 "01_a/notes.txt", "01_a/blob.bin"}
    assert check_files(daemon, b) == 4  # three inputs + its output.json
    (tmp,) = b["intermediate_files"]
    assert tmp["retained"] is False and tmp["key"] is None and len(tmp["sha256"]) == 64
    assert not os.path.exists(obj(daemon, "default", jid, "02_b", "tmp.tmp"))
    # the stage log: the reference's line shape and the module's stderr
    with open(obj(daemon, "default", jid, "01_a", "stage.log")) as f:
        slog = f.read()
    assert "line 2 of a\n" in slog
    assert re.search(r"^\[[^\]]+\] \[a\] \[INFO\] Stage a: STARTING$", slog, re.M), slog
    assert re.search(r"^\[[^\]]+\] \[a\] \[WARNING\] low volume$", slog, re.M), slog

    # pipeline.log: the grep recipes of the reference work
    with open(obj(daemon, "default", jid, "logs", "pipeline.log")) as f:
        plog = f.read()
    lines = plog.splitlines()
    assert lines and all(LOG_LINE.match(x) for x in lines), plog
    assert re.search(r"\[pipeline\] \[INFO\] Stage a: STARTING", plog)
    assert re.search(r"\[pipeline\] \[INFO\] Stage b: COMPLETED \(\d+\.\ds\)", plog)
    assert "[pipeline] [INFO] Input: 01_a/output.json" in plog
    assert "[pipeline] [INFO] Output: 01_a/blob.bin" in plog
    assert f"Job {jid}: COMPLETED" in plog and "FAILED" not in plog
    assert plog.index("Stage a: COMPLETED") < plog.index("Stage b: STARTING")

    # the API serves the same bytes, with Range
    st, hd, body = get(d, f"/v1/jobs/{jid}/logs")
    assert st == 200 and body.decode() == plog
    assert hd["content-type"].startswith("text/plain")
    st, hd, body = get(d, f"/v1/jobs/{jid}/logs", {"Range": "bytes=0-9"})
    assert st == 206 and body == plog.encode()[:10]
    assert hd["content-range"] == f"bytes 0-9/{len(plog.encode())}"
    st, hd, body = get(d, f"/v1/jobs/{jid}/logs", {"Range": "bytes=-7"})
    assert st == 206 and body == plog.encode()[-7:]
    st, hd, body = get(d, f"/v1/jobs/{jid}/logs", {"Range": "bytes=999999-"})
    assert_problem(st, hd, body, 416)
    assert hd["content-range"] == f"bytes */{len(plog.encode())}"
    # the stored stage log through its endpoint, with Range
    tid = stage(j, "a")["task_id"]
    st, hd, body = get(d, f"/v1/jobs/{jid}/tasks/{tid}/logs")
    assert st == 200 and body.decode() == slog
    st, hd, body = get(d, f"/v1/jobs/{jid}/tasks/{tid}/logs", {"Range": "bytes=5-"})
    assert st == 206 and body.decode() == slog[5:]


def test_failed_stage_manifest_skipped_stage_and_grep_failed(daemon, edb):
    pipes = {"p": {"stages": [
        {"name": "a", "module": "echo", "params": {"fail_attempts": 9}, "retries": 0},
        {"name": "b", "module": "echo", "needs": ["a"], "required": False},
    ]}}
    pipes["p"]["stages"][0]["required"] = False
    d = start(daemon, edb, pipes, expect_errors=[ERR_MODULE])
    jid = submit(d, "p")["id"]
    j = wait_job(d, jid, edb=edb)
    assert stage(j, "a")["status"] == "failed" and stage(j, "b")["status"] == "skipped"
    a = check_manifest(read_stored_json(daemon, "default", jid, "01_a", "manifest.json"))
    assert a["status"] == "failed" and a["outputs"] == []
    (e,) = a["errors"]
    assert e["code"] == "ECHO_FAIL" and e["exception_type"] == "ECHO_FAIL"
    assert e["category"] == "module" and "failing on purpose" in e["message"]
    assert not os.path.exists(obj(daemon, "default", jid, "01_a", "output.json"))
    # the stage that never ran gets a manifest from the finalizer
    path = obj(daemon, "default", jid, "02_b", "manifest.json")
    wait_for(lambda: os.path.exists(path), 10, 0.05, "b's skipped manifest")
    b = check_manifest(read_stored_json(daemon, "default", jid, "02_b", "manifest.json"))
    assert b["status"] == "skipped" and b["skip_reason"] == "dependency_failed"
    assert b["attempt"] == 0
    wait_for(lambda: os.path.exists(obj(daemon, "default", jid, "logs", "pipeline.log")), 10,
             0.05, "pipeline.log")
    with open(obj(daemon, "default", jid, "logs", "pipeline.log")) as f:
        plog = f.read()
    failed = [x for x in plog.splitlines() if "FAILED" in x]
    assert len(failed) == 1 and "[ERROR] Stage a: FAILED: attempt 1: failing on purpose" in \
        failed[0], plog
    assert "Stage b: SKIPPED (dependency_failed)" in plog


def test_retry_keeps_earlier_attempts(daemon, edb):
    pipes = {"p": pipe(("a", [], {"fail_attempts": 2, "_retries": 3, "log_lines": 1}))}
    d = start(daemon, edb, pipes, config={"store.url_secret": SECRET})
    jid = submit(d, "p")["id"]
    j = wait_job(d, jid, edb=edb)
    assert j["status"] == "completed"
    tid = stage(j, "a")["task_id"]
    assert stage(j, "a")["attempt"] == 3
    sd = obj(daemon, "default", jid, "01_a")
    for n in (1, 2):
        m = check_manifest(read_stored_json(daemon, "default", jid, "01_a", "attempts", str(n),
                                            "manifest.json"))
        assert m["attempt"] == n and m["status"] == "failed", m
        assert m["errors"][0]["code"] == "ECHO_FAIL"
        assert os.path.isfile(os.path.join(sd, "attempts", str(n), "input.json"))
        assert os.path.isfile(os.path.join(sd, "attempts", str(n), "stage.log"))
        assert not os.path.exists(os.path.join(sd, "attempts", str(n), "output.json"))
    top = check_manifest(read_stored_json(daemon, "default", jid, "01_a", "manifest.json"))
    assert top["attempt"] == 3 and top["status"] == "success"
    # the API: the latest by default, an earlier one with ?attempt=n
    st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/artifacts")
    art = json.loads(b)
    assert st == 200 and art["attempt"] == 3 and art["attempts"] == 3
    assert art["manifest"]["status"] == "success" and art["output"]["attempt"] == 3
    st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/artifacts?attempt=1")
    art1 = check_artifacts(json.loads(b))
    assert st == 200 and art1["attempt"] == 1 and art1["manifest"]["attempt"] == 1
    assert art1["output"] is None and art1["manifest"]["status"] == "failed"
    assert art1["input"]["attempt"] == 1
    st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/logs?attempt=2")
    assert st == 200 and b"failing on purpose" in b
    st, hd, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/artifacts?attempt=4")
    assert_problem(st, hd, b, 404)
    st, hd, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/artifacts?attempt=zero")
    assert_problem(st, hd, b, 422)
    # a retry of the whole job archives the completed attempt too
    st, _, _, raw = retry_job(d, jid, {"from_stage": "a"})
    assert st == 202, raw
    wait_job(d, jid, edb=edb)
    m3 = read_stored_json(daemon, "default", jid, "01_a", "attempts", "3", "manifest.json")
    assert m3["status"] == "success"
    assert os.path.isfile(os.path.join(sd, "attempts", "3", "output.json"))
    assert read_stored_json(daemon, "default", jid, "01_a", "manifest.json")["attempt"] == 4


def test_artifacts_endpoint_links_work_expire_and_refuse_tampering(daemon, edb):
    pipes = {"p": pipe(("a", [], {"artifact": "notes", "blob_bytes": 1000000}))}
    d = start(daemon, edb, pipes,
              config={"store.url_secret": SECRET, "store.url_ttl": "3s"})
    jid = submit(d, "p", input={"x": 1})["id"]
    j = wait_job(d, jid, edb=edb)
    tid = stage(j, "a")["task_id"]
    t0 = time.time()
    st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{tid}/artifacts")
    assert st == 200, b
    art = check_artifacts(json.loads(b))
    assert art["task_id"] == tid and art["stage"] == "a" and art["status"] == "completed"
    assert art["input"]["stage"] == "a" and art["input"]["attempt"] == 1
    assert art["output"]["stage"] == "a"
    check_manifest(art["manifest"])
    assert art["truncated"] == []
    assert set(art["links"]) == {"input", "output", "stage_log", "manifest"}
    files = {f["name"]: f for f in art["files"]}
    assert set(files) == {"notes", "blob"}
    blob = files["blob"]
    assert blob["size_bytes"] == 1000000 and blob["role"] == "output"
    assert blob["type"] == "binary" and len(blob["sha256"]) == 64
    exp = blob["expires_at"]
    assert exp.endswith("Z")
    # the link works, byte for byte, with Range
    st, hd, body = fetch_url(d, blob["url"])
    assert st == 200 and len(body) == 1000000
    assert hashlib.sha256(body).hexdigest() == blob["sha256"]
    assert hd["content-length"] == "1000000" and hd.get("accept-ranges") == "bytes"
    st, hd, part = fetch_url(d, blob["url"], {"Range": "bytes=999990-"})
    assert st == 206 and part == body[999990:]
    assert hd["content-range"] == "bytes 999990-999999/1000000"
    st, _, body = fetch_url(d, art["links"]["stage_log"]["url"])
    assert st == 200 and b"Stage a: STARTING" in body
    # tampering: the signature, the expiry, the key
    u = urllib.parse.urlsplit(blob["url"])
    q = dict(urllib.parse.parse_qsl(u.query))
    bad_sig = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    for path in (f"{u.path}?exp={q['exp']}&sig={bad_sig}",
                 f"{u.path}?exp={int(q['exp']) + 100}&sig={q['sig']}",
                 f"{u.path.replace('blob.bin', 'notes.txt')}?exp={q['exp']}&sig={q['sig']}",
                 f"{u.path}?exp={q['exp']}",
                 f"{u.path}?sig={q['sig']}"):
        st, hd, body = d.http("GET", path, timeout=10.0)
        assert_problem(st, hd, body, 403)
    # expiry (ttl 3 s)
    wait_for(lambda: time.time() > t0 + 4.2, 6, 0.1, "the link's expiry")
    st, hd, body = fetch_url(d, blob["url"])
    assert_problem(st, hd, body, 403)


def test_artifacts_of_a_task_that_has_not_run_and_other_projects(daemon, edb, pg):
    pipes = {"p": pipe(("a", [], {"seconds": 30}), ("b", ["a"], {}))}
    d = start(daemon, edb, pipes, auth=True, config={"store.url_secret": SECRET})
    url = pg.url(dbname=edb.name)
    keys = project_keys(url, ("alpha", "beta"))
    job = submit(d, "p", headers=keys["alpha"])
    jid = job["id"]
    tb = stage(job, "b")["task_id"]
    st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{tb}/artifacts", keys["alpha"])
    assert st == 200, b
    art = check_artifacts(json.loads(b))
    assert art["status"] == "pending" and art["input"] is None and art["output"] is None
    assert art["manifest"] is None and art["files"] == [] and art["attempts"] == 0
    assert art["links"] == {"input": None, "output": None, "stage_log": None, "manifest": None}
    for path in (f"/v1/jobs/{jid}/tasks/{tb}/artifacts", f"/v1/jobs/{jid}/tasks/{tb}/logs",
                 f"/v1/jobs/{jid}/logs"):
        st, hd, b = get(d, path, keys["beta"])
        assert_problem(st, hd, b, 404)
        st, hd, b = get(d, path)
        assert_problem(st, hd, b, 401)
    st, hd, b = get(d, f"/v1/jobs/{jid}/tasks/{jid}/artifacts", keys["alpha"])
    assert_problem(st, hd, b, 404)
    st, hd, b = get(d, f"/v1/jobs/{jid}/tasks/not-a-uuid/artifacts", keys["alpha"])
    assert_problem(st, hd, b, 404)
    st, hd, b = get(d, f"/v1/jobs/{jid}/tasks/{tb}/logs", keys["alpha"])
    assert_problem(st, hd, b, 404)
    # the running stage's manifest says so while its module works
    ta = stage(job, "a")["task_id"]

    def running_manifest():
        st, _, b = get(d, f"/v1/jobs/{jid}/tasks/{ta}/artifacts", keys["alpha"])
        return st == 200 and json.loads(b)["manifest"]

    m = wait_for(running_manifest, 10, 0.05, "a's running manifest")
    check_manifest(m)
    assert m["status"] == "running" and m["completed_at"] is None
    assert m["inputs"][0]["sha256"] is None
    st, _, _ = d.http("DELETE", f"/v1/jobs/{jid}", headers=keys["alpha"], timeout=10.0)
    assert st == 202
    wait_for(lambda: json.loads(get(d, f"/v1/jobs/{jid}/tasks/{ta}/artifacts",
                                    keys["alpha"])[2])["manifest"]["status"] == "cancelled",
             15, 0.1, "a's cancelled manifest")


def _follow(d, path, timeout=30.0):
    """GET path with ?follow=1: the whole body (the server ends it) and the
    times its chunks arrived."""
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=timeout)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data, chunks = b"", []
    deadline = time.time() + timeout
    while time.time() < deadline:
        part = sock.recv(65536)
        if not part:
            break
        chunks.append((time.time(), part))
        data += part
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body, chunks


def test_stage_log_flushed_while_running_followed_and_tailed(daemon, edb):
    pipes = {"p": pipe(("a", [], {"log_lines": 8, "log_every": 0.4}), ("b", ["a"], {}))}
    d = start(daemon, edb, pipes, scheduler={"log_flush": "500ms"})
    jid = submit(d, "p")["id"]
    j = wait_job(d, jid, statuses=("running",), settled=False, edb=edb)
    ta = stage(j, "a")["task_id"]
    path = obj(daemon, "default", jid, "01_a", "stage.log")

    def flushed():
        if not os.path.exists(path):
            return None
        with open(path) as f:
            text = f.read()
        return "line 1 of a" in text and "line 7 of a" not in text

    # stored while the stage still runs: a crash would lose at most the last flush
    wait_for(flushed, 10, 0.05, "the stage log flushed mid-run")
    head, body, chunks = _follow(d, f"/v1/jobs/{jid}/tasks/{ta}/logs?follow=1")
    assert head.startswith("HTTP/1.1 200"), head
    text = body.decode()
    for i in range(8):
        assert text.count(f"line {i} of a\n") == 1, text
    assert "Stage a: COMPLETED" in text
    assert len(chunks) >= 2  # it arrived over time, not at the end
    # the job's log followed to its end
    head, body, _ = _follow(d, f"/v1/jobs/{jid}/logs?follow=1")
    assert head.startswith("HTTP/1.1 200"), head
    text = body.decode()
    assert f"Job {jid}: COMPLETED" in text and text.count("Stage b: COMPLETED") == 1
    st, _, full = get(d, f"/v1/jobs/{jid}/logs")
    assert full.decode() == text
