"""The C SigV4 signer against a server that checks signatures, with no C
HTTP client involved: tests/harness/sigv4sign signs, Python's http.client
sends, the s3server fixture (@20minutes/s3rver + patches/) verifies.

Needs the npm tools (contrib/npm-tools) and SIGV4SIGN (make
check-integration sets it)."""

import hashlib
import http.client
import json
import re
import subprocess
import time
import urllib.parse

import pytest

from conftest import sigv4sign_path

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def enc(s):
    """RFC 3986 encoding of one path segment or query part."""
    return urllib.parse.quote(s, safe="")


def key_path(srv, key):
    return f"/{srv.bucket}/" + "/".join(enc(seg) for seg in key.split("/"))


def harness(*reqs):
    r = subprocess.run([sigv4sign_path()], input="".join(json.dumps(x) + "\n" for x in reqs),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(out) == len(reqs)
    for o in out:
        assert o["ok"], o
    return out


def amz_date(t):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def signed_request(srv, method, path, query="", body=b"", headers=(), secret=None,
                   access_key=None, when=None, payload_hash=None):
    """Signs with the harness and sends with http.client; returns
    (status, body bytes, canonical request)."""
    when = int(time.time()) if when is None else when
    host = f"{srv.host}:{srv.port}"
    phash = payload_hash or hashlib.sha256(body).hexdigest()
    hdrs = [["Host", host], ["X-Amz-Date", amz_date(when)], ["X-Amz-Content-Sha256", phash],
            *[list(h) for h in headers]]
    (sig,) = harness({"method": method, "path": path, "query": query, "headers": hdrs,
                      "payload_sha256": phash, "region": srv.region, "service": "s3",
                      "access_key": access_key or srv.access_key, "secret": secret or srv.secret,
                      "time": when})
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.putrequest(method, path + (f"?{query}" if query else ""), skip_host=True,
                        skip_accept_encoding=True)
        for name, value in hdrs:
            conn.putheader(name, value)
        conn.putheader("Authorization", sig["authorization"])
        if body or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        return resp.status, resp.read(), sig["canonical_request"]
    finally:
        conn.close()


def presign(srv, path, expires=60, when=None, query=""):
    when = int(time.time()) if when is None else when
    (out,) = harness({"path": path, "query": query, "host": f"{srv.host}:{srv.port}",
                      "expires": expires, "region": srv.region, "service": "s3",
                      "access_key": srv.access_key, "secret": srv.secret, "time": when})
    return out["query"]


def plain_get(srv, target):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def s3_code(body):
    m = re.search(rb"<Code>([^<]+)</Code>", body)
    return m.group(1).decode() if m else None


def put(srv, key, data, **kw):
    return signed_request(srv, "PUT", key_path(srv, key), body=data,
                          headers=[("Content-Type", "application/octet-stream")], **kw)


# --------------------------------------------------------------------------


def test_put_then_get_same_bytes(s3server):
    data = bytes(range(256)) * 40
    st, body, creq = put(s3server, "jobs/1/out.bin", data)
    assert st == 200, (body, creq)
    st, body, creq = signed_request(s3server, "GET", key_path(s3server, "jobs/1/out.bin"))
    assert st == 200, (body, creq)
    assert body == data
    with open(s3server.object_path("jobs/1/out.bin"), "rb") as f:
        assert f.read() == data


def test_wrong_secret_is_rejected(s3server):
    st, body, _ = put(s3server, "x", b"x", secret="not-the-secret")
    assert st == 403 and s3_code(body) == "SignatureDoesNotMatch", body


def test_unknown_access_key_is_rejected(s3server):
    st, body, _ = put(s3server, "x", b"x", access_key="AKIDNOBODY")
    assert st == 403 and s3_code(body) == "InvalidAccessKeyId", body


def test_request_dated_20_minutes_ago_is_rejected(s3server):
    st, body, _ = put(s3server, "x", b"x", when=int(time.time()) - 1200)
    assert st == 403 and s3_code(body) == "RequestTimeTooSkewed", body


def test_list_with_odd_query_and_trailing_slash(s3server):
    """Bucket-level GET on /bucket/ (trailing slash signed) with a prefix
    holding '!' and a space (RFC 3986-encoded query values)."""
    assert put(s3server, "a!b c/1", b"1")[0] == 200
    assert put(s3server, "zz", b"2")[0] == 200
    st, body, creq = signed_request(s3server, "GET", f"/{s3server.bucket}/",
                                    query=f"list-type=2&prefix={enc('a!b c')}")
    assert st == 200, (body, creq)
    assert b"<Key>a!b c/1</Key>" in body and b"zz" not in body, body


@pytest.mark.parametrize("key", [
    "with space.txt",
    "dir/sub dir/ünïcödé 日本語 😀.bin",
    "tilde~name",
    "plus+bang!star*quote'(paren).txt",
    "pct%20literal%2Fnot-a-slash",
    "a=b&c;d,e:f@g$h",
])
def test_odd_keys_round_trip(s3server, key):
    data = f"payload for {key}".encode()
    st, body, creq = put(s3server, key, data)
    assert st == 200, (body, creq)
    st, body, creq = signed_request(s3server, "GET", key_path(s3server, key))
    assert st == 200, (body, creq)
    assert body == data


def test_presigned_get(s3server):
    assert put(s3server, "dl/file 1.txt", b"hello")[0] == 200
    path = key_path(s3server, "dl/file 1.txt")
    q = presign(s3server, path, expires=60)
    st, body = plain_get(s3server, f"{path}?{q}")
    assert st == 200, body
    assert body == b"hello"


def test_presigned_get_tampered_or_extended_is_rejected(s3server):
    assert put(s3server, "dl/f", b"hello")[0] == 200
    path = key_path(s3server, "dl/f")
    q = presign(s3server, path, expires=60)
    sig = re.search(r"X-Amz-Signature=([0-9a-f]{64})", q).group(1)
    flipped = ("0" if sig[-1] != "0" else "1")
    tampered = q.replace(sig, sig[:-1] + flipped)
    st, body = plain_get(s3server, f"{path}?{tampered}")
    assert st == 403 and s3_code(body) == "SignatureDoesNotMatch", body
    extended = q.replace("X-Amz-Expires=60", "X-Amz-Expires=3600")
    assert extended != q
    st, body = plain_get(s3server, f"{path}?{extended}")
    assert st == 403 and s3_code(body) == "SignatureDoesNotMatch", body
    other = key_path(s3server, "dl/g")
    st, body = plain_get(s3server, f"{other}?{q}")
    assert st == 403, body


def test_presigned_get_expired_is_rejected(s3server):
    assert put(s3server, "dl/old", b"x")[0] == 200
    path = key_path(s3server, "dl/old")
    q = presign(s3server, path, expires=30, when=int(time.time()) - 120)
    st, body = plain_get(s3server, f"{path}?{q}")
    assert st == 403 and s3_code(body) == "AccessDenied", body


def test_outage_restart_keeps_objects(s3server):
    assert put(s3server, "survives", b"still here")[0] == 200
    s3server.stop()
    with pytest.raises(OSError):
        plain_get(s3server, "/")
    s3server.start()
    st, body, _ = signed_request(s3server, "GET", key_path(s3server, "survives"))
    assert st == 200 and body == b"still here"
