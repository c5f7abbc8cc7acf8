"""Uploads (issue "security"): POST /v1/uploads hands out a short-lived
signed PUT link for exactly size_bytes (the file store's HMAC link on the
daemon, or an S3 presigned PUT with Content-Length signed into it); the
object lands under <project>/uploads/<id>; a job names it with "upload" and
its first stages get it as the input "upload". Sizes past the limit are
413; wrong sizes, tampered or expired links refused; unknown or another
project's uploads 422; nothing of a refusal stays behind."""

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from conftest import stageline_db
from slhelpers import wait_for
from test_artifacts import SECRET, pipe
from test_artifacts_s3 import s3_bytes, s3_config
from test_engine import (  # noqa: F401  (edb is a fixture)
    project_keys,
    assert_problem,
    edb,
    stage,
    start,
    submit,
    wait_job,
)

PIPES = {"p": pipe(("first", [], {}), ("second", ["first"], {}))}


def new_upload(d, size, headers=None, want=201):
    st, hd, b = d.http("POST", "/v1/uploads", body=json.dumps({"size_bytes": size}),
                       headers={"Content-Type": "application/json", **(headers or {})})
    assert st == want, (st, b[:500])
    return json.loads(b), hd


def put_daemon(d, url, data):
    return d.http("PUT", url, body=data, headers={"Content-Type": "application/octet-stream"},
                  timeout=10.0)


def test_file_store_upload_reaches_the_first_stage(daemon, edb):
    d = start(daemon, edb, PIPES, config={"store.url_secret": SECRET,
                                         "quota.max_input_bytes": 100000})
    data = os.urandom(5000)
    up, _ = new_upload(d, len(data))
    assert up["method"] == "PUT" and up["headers"] == {"Content-Length": "5000"}
    assert up["url"].startswith("/v1/objects/default/uploads/" + up["id"] + "?")
    assert up["size_bytes"] == 5000 and up["expires_at"].endswith("Z")
    # the size is bound to the link
    st, hd, b = put_daemon(d, up["url"], data[:-1])
    assert_problem(st, hd, b, 400)
    u = urllib.parse.urlsplit(up["url"])
    q = dict(urllib.parse.parse_qsl(u.query))
    for bad in (f"{u.path}?exp={q['exp']}&size=4999&sig={q['sig']}",
                f"{u.path}?exp={int(q['exp']) + 5}&size=5000&sig={q['sig']}",
                f"{u.path}x?exp={q['exp']}&size=5000&sig={q['sig']}",
                f"{u.path}?exp={q['exp']}&size=5000"):
        st, hd, b = put_daemon(d, bad, data[:4999] if "4999" in bad else data)
        assert_problem(st, hd, b, 403)
    # the GET links' signature does not open the PUT, and back
    st, hd, b = d.http("GET", up["url"])
    assert_problem(st, hd, b, 403)
    st, _, b = put_daemon(d, up["url"], data)
    assert st == 201, b
    key = f"default/uploads/{up['id']}"
    stored = os.path.join(daemon.tmp_path, "var", "objects", key)
    with open(stored, "rb") as f:
        assert f.read() == data
    # a job takes it: the first stage gets it as "upload", the second not
    job = submit(d, "p", extra={"upload": up["id"]})
    j = wait_job(d, job["id"], edb=edb)
    assert j["status"] == "completed", j
    out1 = edb.one("SELECT output FROM tasks WHERE id = %s",
                   (stage(j, "first")["task_id"],))["output"]
    assert out1["inputs"]["upload"] == {"bytes": 5000,
                                        "sha256": hashlib.sha256(data).hexdigest()}, out1
    out2 = edb.one("SELECT output FROM tasks WHERE id = %s",
                   (stage(j, "second")["task_id"],))["output"]
    assert "upload" not in out2["inputs"]
    # the manifest names it with its hash
    m = json.load(open(os.path.join(daemon.tmp_path, "var", "objects", "default", job["id"],
                                    "01_first", "manifest.json")))
    (inp,) = [i for i in m["inputs"] if i["name"] == "upload"]
    assert inp["key"] == key and inp["sha256"] == hashlib.sha256(data).hexdigest()
    # and a resubmit can learn which upload it was
    st, _, b = d.http("GET", f"/v1/jobs/{job['id']}/input")
    assert st == 200 and json.loads(b) == {"job_id": job["id"], "input": None,
                                           "upload": up["id"]}, b


def test_upload_limits_and_bad_references(daemon, edb, pg):
    d = start(daemon, edb, PIPES, auth=True,
              config={"store.url_secret": SECRET, "store.url_ttl": "1s",
                      "quota.max_input_bytes": 4096})
    url = pg.url(dbname=edb.name)
    keys = project_keys(url, ("alpha", "beta"))
    ro = {"Authorization": "Bearer " + stageline_db(
        url, "keys", "create", "--project", "alpha", "--scopes", "jobs:read")}
    # past the quota (project default 4096) and past a project override
    st, hd, b = d.http("POST", "/v1/uploads", body=json.dumps({"size_bytes": 5000}),
                       headers={"Content-Type": "application/json", **keys["alpha"]})
    doc = assert_problem(st, hd, b, 413)
    assert doc["limit"] == "max_input_bytes" and doc["value"] == 4096 and doc["usage"] == 5000
    for body, status in (({"size_bytes": 0}, 422), ({"size_bytes": "5"}, 422),
                         ({"size_bytes": 5, "name": "x"}, 422), ([1], 400)):
        st, hd, b = d.http("POST", "/v1/uploads", body=json.dumps(body),
                           headers={"Content-Type": "application/json", **keys["alpha"]})
        assert_problem(st, hd, b, status)
    st, hd, b = d.http("POST", "/v1/uploads", body=json.dumps({"size_bytes": 5}),
                       headers={"Content-Type": "application/json", **ro})
    assert_problem(st, hd, b, 403)
    # an upload of alpha's is not beta's; an unknown one is nobody's
    up, _ = new_upload(d, 10, keys["alpha"])
    st, _, b = put_daemon(d, up["url"], b"0123456789")
    assert st == 201, b
    n0 = edb.one("SELECT count(*) AS n FROM jobs")["n"]
    for hdrs, uid in ((keys["beta"], up["id"]), (keys["alpha"], "01a21600-0000-7000-8000-"
                                                  "000000000000"), (keys["alpha"], "nope")):
        st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p", "upload": uid}),
                           headers={"Content-Type": "application/json", **hdrs})
        doc = assert_problem(st, hd, b, 422)
        assert doc["errors"][0]["field"] == "upload", doc
    assert edb.one("SELECT count(*) AS n FROM jobs")["n"] == n0
    # the link expires (url_ttl 1 s)
    up2, _ = new_upload(d, 3, keys["alpha"])
    wait_for(lambda: time.time() > int(dict(urllib.parse.parse_qsl(
        urllib.parse.urlsplit(up2["url"]).query))["exp"]) + 1.1, 5, 0.1, "expiry")
    st, hd, b = put_daemon(d, up2["url"], b"abc")
    assert_problem(st, hd, b, 403)


def test_s3_presigned_put_binds_the_size(daemon, edb, s3server):
    d = start(daemon, edb, PIPES, config=s3_config(s3server))
    data = os.urandom(3000)
    up, _ = new_upload(d, len(data))
    assert up["url"].startswith(s3server.endpoint + "/")
    assert "X-Amz-SignedHeaders=content-length%3Bhost" in up["url"], up["url"]

    def put(body):
        rq = urllib.request.Request(up["url"], data=body, method="PUT")
        try:
            with urllib.request.urlopen(rq, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    st, b = put(data[:100])
    assert st == 403 and b"SignatureDoesNotMatch" in b, (st, b[:300])
    st, b = put(data)
    assert st == 200, b[:300]
    assert s3_bytes(s3server, f"default/uploads/{up['id']}") == data
    job = submit(d, "p", extra={"upload": up["id"]})
    j = wait_job(d, job["id"], edb=edb)
    assert j["status"] == "completed", j
    out1 = edb.one("SELECT output FROM tasks WHERE id = %s",
                   (stage(j, "first")["task_id"],))["output"]
    assert out1["inputs"]["upload"]["sha256"] == hashlib.sha256(data).hexdigest()
