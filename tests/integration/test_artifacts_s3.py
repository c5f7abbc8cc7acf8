"""The daemon on the S3 backend, against a local S3 that checks every
signature (@20minutes/s3rver with the fixes of TOOLCHAIN §7, the s3server
fixture):

- the speech demo (contrib/demo.yaml as the quickstart runs it, with
  store.backend s3): every stage's files and manifests are in the bucket
  with the sizes and SHA-256 the manifests give, pipeline.log too;
- presigned links from the artifacts endpoint work, refuse tampering and
  expire;
- a wrong secret: the store refuses (403 SignatureDoesNotMatch), the task
  fails with that message, nothing is retried in a loop;
- S3 stopped in the middle of a job: the uploads are tried again while the
  task keeps its lease, and the job completes once S3 is back, without a
  retry spent."""

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import jsonschema

from slhelpers import free_port, wait_for
from test_artifacts import MANIFEST_SCHEMA, check_artifacts, pipe
from test_engine import (  # noqa: F401  (edb is a fixture)
    ERR_LIFECYCLE,
    ERR_MODULE,
    edb,
    run_speech_demo,
    stage,
    start,
    start_demo,
    submit,
    wait_job,
)


def s3_config(srv, **over):
    cfg = {"store.backend": "s3", "store.s3.endpoint": srv.endpoint,
           "store.s3.bucket": srv.bucket, "store.s3.region": srv.region,
           "store.s3.path_style": True, "store.s3.access_key_id": srv.access_key,
           "store.s3.secret_access_key": srv.secret, "store.s3.prefix": "sl/"}
    cfg.update(over)
    return cfg


def s3_bytes(srv, key, prefix="sl/"):
    with open(srv.object_path(prefix + key), "rb") as f:
        return f.read()


def s3_has(srv, key, prefix="sl/"):
    return os.path.exists(srv.object_path(prefix + key))


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(d, name):
    st, _, body = d.http("GET", "/metrics", timeout=10.0)
    assert st == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_speech_demo_on_s3_with_manifests_hashes_and_links(daemon, edb, tmp_path, s3server):
    port = free_port()
    srv = s3server
    d = start_demo(daemon, "demo-s3", port, {
        "STAGELINE_SERVER_LISTEN": f"127.0.0.1:{port}",
        "STAGELINE_DATABASE_URL": daemon.pg.url(dbname=edb.name),
        "STAGELINE_STORE_BACKEND": "s3",
        "STAGELINE_STORE_S3_ENDPOINT": srv.endpoint,
        "STAGELINE_STORE_S3_BUCKET": srv.bucket,
        "STAGELINE_STORE_S3_PATH_STYLE": "true",
        "STAGELINE_STORE_S3_PREFIX": "sl/",
        "STAGELINE_STORE_URL_TTL": "3s",
        "AWS_ACCESS_KEY_ID": srv.access_key,
        "AWS_SECRET_ACCESS_KEY": srv.secret,
        "STAGELINE_SCHEDULER_SCRATCH_DIR": str(tmp_path / "scratch"),
        "STAGELINE_AUTH_ENABLED": "false",
        "STAGELINE_SERVER_SHUTDOWN_GRACE": "5s",
    }, edb)
    done = run_speech_demo(d)
    jid = done["id"]
    base = f"default/{jid}"
    checked = 0
    for s in done["stages"]:
        sd = f"{base}/{s['stage_number']:02d}_{s['stage']}"
        for f in ("input.json", "output.json", "stage.log", "manifest.json"):
            assert s3_has(srv, f"{sd}/{f}"), (sd, f)
        m = json.loads(s3_bytes(srv, f"{sd}/manifest.json"))
        jsonschema.validate(m, MANIFEST_SCHEMA)
        assert m["status"] == "success" and m["stage"] == s["stage"], m
        for f in m["inputs"] + m["outputs"] + m["intermediate_files"]:
            if f["key"] is None:
                continue
            data = s3_bytes(srv, f["key"])
            assert len(data) == f["size_bytes"], f
            assert hashlib.sha256(data).hexdigest() == f["sha256"], f
            checked += 1
    assert checked >= 14  # the demo's wav, json, txt and srt files, in and out
    wait_for(lambda: s3_has(srv, f"{base}/logs/pipeline.log"), 15, 0.1, "pipeline.log in S3")
    plog = s3_bytes(srv, f"{base}/logs/pipeline.log").decode()
    assert json.loads(s3_bytes(srv, f"{base}/input.json"))["text"].startswith("Every stage")
    assert "[pipeline] [INFO] Stage report: COMPLETED" in plog and "FAILED" not in plog
    st, _, body = d.http("GET", f"/v1/jobs/{jid}/logs", timeout=10.0)
    assert st == 200 and body.decode() == plog

    # presigned S3 links: they work, refuse tampering, expire
    tts = stage(done, "tts")
    st, _, b = d.http("GET", f"/v1/jobs/{jid}/tasks/{tts['task_id']}/artifacts", timeout=10.0)
    assert st == 200, b
    art = check_artifacts(json.loads(b))
    t0 = time.time()
    (wav,) = [f for f in art["files"] if f["path"].endswith("speech.wav")]
    assert wav["url"].startswith(srv.endpoint + "/"), wav["url"]
    assert "X-Amz-Signature=" in wav["url"] and "X-Amz-Expires=3" in wav["url"]
    st, data = fetch(wav["url"])
    assert st == 200 and hashlib.sha256(data).hexdigest() == wav["sha256"]
    st, log = fetch(art["links"]["stage_log"]["url"])
    assert st == 200 and b"Stage tts: STARTING" in log
    u = urllib.parse.urlsplit(wav["url"])
    q = urllib.parse.parse_qsl(u.query)
    sig = dict(q)["X-Amz-Signature"]
    bad = [(k, (sig[:-1] + ("0" if sig[-1] != "0" else "1")) if k == "X-Amz-Signature" else v)
           for k, v in q]
    st, body = fetch(urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(bad))))
    assert st == 403 and b"SignatureDoesNotMatch" in body, body[:300]
    longer = [(k, "900" if k == "X-Amz-Expires" else v) for k, v in q]
    st, body = fetch(urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(longer))))
    assert st == 403, body[:300]
    wait_for(lambda: time.time() > t0 + 4.5, 8, 0.1, "the link's expiry")
    st, body = fetch(wav["url"])
    assert st == 403 and b"AccessDenied" in body, body[:300]


def test_wrong_secret_fails_the_task_with_the_s3_error(daemon, edb, s3server):
    pipes = {"p": pipe(("a", [], {}))}
    d = start(daemon, edb, pipes, config=s3_config(s3server, **{
        "store.s3.secret_access_key": "not-the-secret"}),
        expect_errors=[ERR_MODULE, ERR_LIFECYCLE, r'"event":"job\.module\.store'])
    t0 = time.monotonic()
    jid = submit(d, "p")["id"]
    j = wait_job(d, jid, timeout=20, edb=edb)
    assert j["status"] == "failed"
    err = stage(j, "a")["error"]
    assert err["code"] == "upload_failed" and err["category"] == "infra", err
    assert "403 SignatureDoesNotMatch" in err["message"], err
    assert "not-the-secret" not in json.dumps(j)
    assert time.monotonic() - t0 < 10  # a refusal is not tried again for minutes
    assert metric(d, "stageline_store_transfer_retries_total") == 0


def test_s3_outage_mid_job_then_the_job_completes(daemon, edb, s3server):
    pipes = {"p": pipe(("a", [], {"seconds": 1.0, "blob_bytes": 200000}),
                       ("b", ["a"], {"artifact": "notes"}))}
    d = start(daemon, edb, pipes, config=s3_config(s3server),
              expect_errors=[r'"event":"job\.module\.store_retry"'])
    jid = submit(d, "p")["id"]
    wait_job(d, jid, statuses=("running",), settled=False, edb=edb)
    s3server.stop()
    # the attempt ends while S3 is away: its uploads are tried again
    d.wait_log(lambda l: l["event"] == "job.module.store_retry", timeout=15,
               what="a store transfer tried again")
    # the outage lasts until the engine has tried again more than once
    wait_for(lambda: metric(d, "stageline_store_transfer_retries_total") >= 3, 30, 0.1,
             "three store retries during the outage")
    s3server.start()
    j = wait_job(d, jid, timeout=60, edb=edb)
    assert j["status"] == "completed", j
    assert stage(j, "a")["attempt"] == 1 and stage(j, "a")["retries"] == 0
    assert metric(d, "stageline_store_transfer_retries_total") > 0
    m = json.loads(s3_bytes(s3server, f"default/{jid}/01_a/manifest.json"))
    assert m["status"] == "success"
    (blob,) = [f for f in m["outputs"] if f["name"] == "blob"]
    assert hashlib.sha256(s3_bytes(s3server, blob["key"])).hexdigest() == blob["sha256"]
    out_b = json.loads(s3_bytes(s3server, f"default/{jid}/02_b/output.json"))
    assert out_b["inputs"]["blob"]["sha256"] == blob["sha256"]
