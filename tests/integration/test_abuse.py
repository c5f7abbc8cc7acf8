"""Abuse paths (issue "security"): what a hostile client or module tries, and
that each is refused clearly and leaves nothing behind:

- header injection (CR/LF and controls in header values, a planted
  X-Request-Id), never reflected into response headers;
- path traversal in artifact names and store keys (`../`, absolute paths,
  a symlink out of the workdir, encoded slashes and dot segments in
  /v1/objects/);
- deeply nested and oversized JSON (422 past 64 levels, 400 past the
  parser's bound, 413 past the body limit);
- invalid UTF-8 and NUL bytes in params (400) and in a module's output and
  stderr (stored and served as valid UTF-8 without NUL);
- no URL fetched on behalf of a user (a canary listener sees nothing);
- a module's environment holds none of the daemon's secrets.

Signed-URL expiry and tampering: test_artifacts.py, test_artifacts_s3.py,
test_uploads.py. Another project's resume_from: test_engine.py; another
project's upload: test_uploads.py. Key brute force: the failed-auth rate
limit tests (test_jwt_auth.py)."""

import json
import os
import socket
import threading
import time

from conftest import Daemon, clean_env
from slhelpers import raw_exchange
from test_artifacts import pipe
from test_engine import (  # noqa: F401  (edb is a fixture)
    ERR_LIFECYCLE,
    ERR_MODULE,
    assert_problem,
    edb,
    stage,
    start,
    submit,
    wait_job,
)


def post_raw(d, body, ctype="application/json", extra=b""):
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + extra + b"\r\n"
    res = raw_exchange(d.port, [head + body], read_timeout=5.0)
    return res


def status_of(raw):
    line = raw.split(b"\r\n", 1)[0]
    return int(line.split()[1])


def test_header_injection_is_refused_and_never_reflected(daemon, edb):
    d = start(daemon, edb, {"p": pipe(("a", [], {}))})
    # a CR inside a header value, a bare LF line, a control character
    for extra in (b"X-Evil: a\rSet-Cookie: x=1\r\n", b"X-Request-Id: abc\r\n\nSet-Cookie: y\r\n",
                  b"Idempotency-Key: k\x01ey\r\n"):
        res = post_raw(d, b'{"pipeline": "p"}', extra=extra)
        data = res.data if hasattr(res, "data") else res
        data = data if isinstance(data, bytes) else bytes(data)
        assert status_of(data) == 400, data[:300]
        assert b"set-cookie" not in data.split(b"\r\n\r\n", 1)[0].lower(), data[:300]
    # a planted request id that is not well formed is replaced, not echoed
    st, hd, _ = d.http("GET", "/healthz", headers={"X-Request-Id": "<script>alert(1)</script>"})
    assert st == 200 and "<" not in hd["x-request-id"], hd
    assert edb.one("SELECT count(*) AS n FROM jobs")["n"] == 0


def test_path_traversal_in_artifacts_and_object_keys(daemon, edb, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    pipes = {"dots": pipe(("a", [], {"raw_artifact_path": "../../../etc/passwd"})),
             "abs": pipe(("a", [], {"raw_artifact_path": "/etc/passwd"})),
             "link": pipe(("a", [], {"symlink_to": str(secret)}))}
    d = start(daemon, edb, pipes, config={"store.url_secret": "x" * 40},
              expect_errors=[ERR_MODULE, ERR_LIFECYCLE])
    jobs = {p: submit(d, p)["id"] for p in pipes}
    for p, jid in jobs.items():
        j = wait_job(d, jid, edb=edb)
        assert j["status"] == "failed", (p, j)
        err = stage(j, "a")["error"]
        if p == "link":
            assert err["code"] == "artifact_missing", err  # a symlink is not a regular file
        else:
            assert err["code"] == "protocol_error", err  # the frame itself is refused
    # nothing of /etc/passwd or the secret reached the store
    root = os.path.join(daemon.tmp_path, "var", "objects")
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                data = fh.read()
            assert b"root:x:0:0" not in data and b"top secret" not in data, (dirpath, f)
    # store keys through the object route: dot segments, encoded slashes, NUL
    for path in ("/v1/objects/a/../b?exp=1&sig=" + "0" * 64,
                 "/v1/objects/a/%2e%2e/b?exp=1&sig=" + "0" * 64,
                 "/v1/objects/a%2Fb?exp=1&sig=" + "0" * 64,
                 "/v1/objects/a%00b?exp=1&sig=" + "0" * 64):
        st, hd, b = d.http("GET", path)
        assert st == 400, (path, st, b[:200])
    st, hd, b = d.http("GET", "/v1/objects/..?exp=1&sig=" + "0" * 64)
    assert st in (400, 404), st


def nest(depth):
    v = 1
    for _ in range(depth):
        v = [v]
    return v


def test_deep_and_oversized_json(daemon, edb):
    # no scheduler: the accepted job is not run (echo would echo its input)
    d = start(daemon, edb, {"p": pipe(("a", [], {}))}, scheduler={"enabled": False})
    h = {"Content-Type": "application/json"}
    st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p",
                                                           "params": {"x": nest(100)}}),
                       headers=h)
    doc = assert_problem(st, hd, b, 422)
    assert doc["errors"][0]["field"] == "params" and "64" in doc["errors"][0]["message"]
    st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "p",
                                                           "input": nest(63)}), headers=h)
    assert st == 201, b[:300]  # just within the bound
    deep = '{"pipeline": "p", "input": ' + "[" * 5000 + "]" * 5000 + "}"
    st, hd, b = d.http("POST", "/v1/jobs", body=deep, headers=h)
    assert_problem(st, hd, b, 400)
    big = json.dumps({"pipeline": "p", "input": "x" * (2 << 20)})  # limits: 1 MiB in tests
    st, hd, b = d.http("POST", "/v1/jobs", body=big, headers=h)
    assert st == 413, (st, b[:200])
    assert edb.one("SELECT count(*) AS n FROM jobs")["n"] == 1


def test_invalid_utf8_and_nul_bytes(daemon, edb):
    d = start(daemon, edb, {"p": pipe(("a", [], {})),
                            "q": pipe(("a", [], {"stderr_hex": "6f6b00ff1b5b316d0a7e",
                                                 "extra": "quote\" back\\ \u2028 \u00e9"}))})
    for body in (b'{"pipeline": "p", "params": {"x": "\xff\xfe"}}',
                 b'{"pipeline": "p", "params": {"x": "a\\u0000b"}}',
                 b'{"pipeline": "p\x00"}'):
        res = post_raw(d, body)
        data = res.data if hasattr(res, "data") else res
        data = data if isinstance(data, bytes) else bytes(data)
        assert status_of(data) == 400, data[:300]
    assert edb.one("SELECT count(*) AS n FROM jobs")["n"] == 0
    # a module's stderr with NUL, controls and bad UTF-8; its output with
    # characters JSON must escape
    d2 = d
    j2 = submit(d2, "q")["id"]
    j = wait_job(d2, j2, edb=edb)
    assert j["status"] == "completed", j
    tid = stage(j, "a")["task_id"]
    st, hd, log = d2.http("GET", f"/v1/jobs/{j2}/tasks/{tid}/logs")
    assert st == 200
    text = log.decode("utf-8")  # strict: valid UTF-8
    assert "\x00" not in text and "\x1b" not in text
    assert "ok\ufffd\ufffd\ufffd[1m" in text, text
    st, _, b = d2.http("GET", f"/v1/jobs/{j2}/tasks/{tid}/artifacts")
    out = json.loads(b)["output"]
    assert out["extra"] == "quote\" back\\ \u2028 \u00e9"


def test_no_url_is_fetched_on_behalf_of_a_user(daemon, edb):
    """Every field that could carry a URL gets one pointing at a canary; the
    daemon never connects to it (the only outbound client is the S3 store's,
    to its configured endpoint)."""
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(16)
    canary.settimeout(0.2)
    port = canary.getsockname()[1]
    hits = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                c, _ = canary.accept()
                hits.append(c.recv(200))
                c.close()
            except OSError:
                pass

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}/x"
    try:
        d = start(daemon, edb, {"p": pipe(("a", [], {}), ("b", ["a"], {}))},
                  config={"store.url_secret": "y" * 40})
        jid = submit(d, "p", params={"callback": url, "webhook_url": url},
                     input={"url": url, "source": {"href": url}})["id"]
        assert wait_job(d, jid, edb=edb)["status"] == "completed"
        h = {"Content-Type": "application/json"}
        for body in ({"pipeline": "p", "upload": url},
                     {"pipeline": "p", "resume_from": {"job_id": url, "stage": "a"}}):
            st, hd, b = d.http("POST", "/v1/jobs", body=json.dumps(body), headers=h)
            assert st in (404, 422), (st, b[:300])
        st, _, _ = d.http("POST", "/v1/uploads", body=json.dumps({"size_bytes": 1, "url": url}),
                          headers=h)
        assert st == 422
    finally:
        stop.set()
        th.join(2)
        # whatever connected and was not accepted yet is still in the backlog
        canary.setblocking(False)
        while True:
            try:
                c, _ = canary.accept()
            except OSError:
                break
            hits.append(b"(pending connection)")
            c.close()
        canary.close()
    assert hits == [], hits


def test_modules_get_none_of_the_daemons_secrets(daemon, edb):
    """The daemon's own configuration secrets (from STAGELINE_* and AWS_*
    variables, or the config) never reach a module's environment: modules
    are semi-trusted code (docs/security/threat-model.md)."""
    secret = "s3cr3t-url-" + "k" * 32
    env_secrets = {"AWS_SECRET_ACCESS_KEY": "aws-" + "z" * 36, "PGPASSWORD": "pg-pass-123",
                   "STAGELINE_STORE_URL_SECRET": secret}
    d0 = start(daemon, edb, {"p": pipe(("a", [], {"show_env": True}))},
               config={"store.url_secret": secret})
    # the same daemon again, with secrets in its own environment as well
    cfg, argv, port = d0.cfg_path, d0.argv, d0.port
    d0.stop()
    d = Daemon(daemon, "env", cfg, argv, clean_env(env_secrets), port, (), False)
    daemon.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_ready(timeout=20)
    jid = submit(d, "p")["id"]
    j = wait_job(d, jid, edb=edb)
    assert j["status"] == "completed", j
    out = edb.one("SELECT output FROM tasks WHERE id = %s",
                  (stage(j, "a")["task_id"],))["output"]
    env = out["env"]
    assert set(env) <= {"PATH", "LANG", "HOME", "PWD", "LC_CTYPE", "STAGELINE_JOB_ID",
                        "STAGELINE_TASK_ID", "STAGELINE_STAGE", "STAGELINE_ATTEMPT",
                        "STAGELINE_WORKDIR", "STAGELINE_REQUEST_ID",
                        "STAGELINE_PROTOCOL"}, sorted(env)
    blob = json.dumps(env)
    for v in list(env_secrets.values()) + [secret, "postgresql://"]:
        assert v not in blob, v
