"""JWT bearer tokens and failed-auth rate limiting end to end (docs/security/auth.md).

Tokens are made here with python3-cryptography (RS256 with an RSA 2048
key, ES256 with a P-256 key whose DER signature is turned into JWS r||s,
HS256 with hmac); the daemon gets the public key as a PEM file in tmp_path.
A token acts for its project claim with its scope claim: jobs are created
and read with it, a missing scope is 403, another project's job 404, and
every bad token is the same 401 as a bad API key. Failed authentications
from one address end in 429 with Retry-After, before any database lookup
(PostgreSQL is stopped to show it), for a good key too, until the window
passes."""

import base64
import hashlib
import hmac
import json
import secrets
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from slhelpers import free_port, http_request, wait_for
from test_jobs import (PROBLEM, bearer, db, demo_body, get, insert_key, make_key, post, problem,
                       start)

ISS = "https://idp.test"
AUD = "stageline-test"
HS_SECRET = "an-hs256-secret-for-tests-0123456789abcdef"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """Makes compact JWS tokens with one key."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "rsa":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        self.pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data, alg=None, der=False):
        alg = alg or self.alg
        if alg == "HS256":
            return hmac.new(HS_SECRET.encode(), data, hashlib.sha256).digest()
        if alg == "RS256":
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        sig = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        if der:
            return sig
        r, s = decode_dss_signature(sig)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def token(self, claims=None, header=None, alg=None, sign_with=None, der=False, **over):
        alg = alg or self.alg
        h = {"alg": alg, "typ": "JWT"}
        h.update(header or {})
        now = int(time.time())
        c = {"iss": ISS, "aud": AUD, "sub": "svc", "iat": now, "exp": now + 300,
             "project": "nobody", "scope": "jobs:read jobs:write"}
        c.update(claims or {})
        c.update(over)
        c = {k: v for k, v in c.items() if v is not None}
        data = (b64u(json.dumps(h).encode()) + "." + b64u(json.dumps(c).encode())).encode()
        if sign_with is not None:
            sig = hmac.new(sign_with, data, hashlib.sha256).digest()
        else:
            sig = self.sign(data, alg if alg in ("HS256", "RS256", "ES256") else None, der)
        return data.decode() + "." + b64u(sig)


def jwt_config(tmp_path, signer, **extra):
    pem = tmp_path / f"jwt-{signer.kind}.pem"
    pem.write_bytes(signer.pem)
    cfg = {
        "auth.jwt.enabled": True,
        "auth.jwt.issuer": ISS,
        "auth.jwt.audience": AUD,
        "auth.jwt.leeway": "5s",
        "auth.jwt.public_key_file": str(pem),
        "auth.jwt.public_key_kid": "pk-1",
        "auth.jwt.hs256_secret": HS_SECRET,
        "auth.jwt.hs256_kid": "hs-1",
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(params=["rsa", "ec"])
def signer(request):
    return Signer(request.param)


def projects(pg, *names):
    with db(pg) as cur:
        for n in names:
            cur.execute("INSERT INTO projects (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (n, n))


def tok(t):
    return {"Authorization": f"Bearer {t}"}


def test_jwt_jobs_scopes_and_projects(daemon, pg, tmp_path, signer):
    suffix = secrets.token_hex(4)
    pa, pb = f"jwa-{suffix}", f"jwb-{suffix}"
    d = start(daemon, auth=True, config=jwt_config(tmp_path, signer, **{"auth.max_failures": 0}))
    projects(pg, pa, pb)
    assert d.find_log(lambda l: l["event"] == "auth.jwt_key" and l.get("alg") == signer.alg)

    rw = signer.token(project=pa)
    st, hd, job, raw = post(d, demo_body(n=1), tok(rw))
    assert st == 201, raw
    path = f"/v1/jobs/{job['id']}"
    st, _, got, raw = get(d, path, tok(rw))
    assert st == 200 and got["id"] == job["id"], raw
    # with a kid, as an array of scopes, and through the HS256 key
    st, _, _, raw = get(d, path, tok(signer.token(project=pa, header={"kid": "pk-1"},
                                                  scope=["jobs:read", "openid"])))
    assert st == 200, raw
    st, _, _, raw = get(d, path, tok(signer.token(project=pa, alg="HS256",
                                                  header={"kid": "hs-1"})))
    assert st == 200, raw
    # a missing scope is 403 naming it
    st, hd, _, raw = post(d, demo_body(n=2), tok(signer.token(project=pa, scope="jobs:read")))
    doc = problem(st, hd, raw, 403)
    assert doc["missing_scopes"] == ["jobs:write"], doc
    # another project's job is 404, as for API keys
    st, hd, _, raw = get(d, path, tok(signer.token(project=pb)))
    problem(st, hd, raw, 404)
    st, _, page, raw = get(d, "/v1/jobs?limit=50", tok(signer.token(project=pb)))
    assert st == 200 and job["id"] not in {j["id"] for j in page["data"]}, raw
    # API keys keep working beside tokens
    with db(pg) as cur:
        key = insert_key(cur, pa, ["jobs:read"])
    assert get(d, path, bearer(key))[0] == 200
    with db(pg) as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE project_id = %s", (pa,))
        assert cur.fetchone()[0] == 1


def test_every_bad_token_is_the_same_401(daemon, pg, tmp_path, signer):
    suffix = secrets.token_hex(4)
    pa = f"jwc-{suffix}"
    d = start(daemon, auth=True, config=jwt_config(tmp_path, signer, **{"auth.max_failures": 0}))
    projects(pg, pa)
    good = signer.token(project=pa)
    assert get(d, "/v1/jobs", tok(good))[0] == 200
    now = int(time.time())
    parts = good.split(".")
    tampered_payload = b64u(json.dumps({"iss": ISS, "aud": AUD, "exp": now + 300,
                                        "project": pa, "scope": "admin"}).encode())
    bad = {
        "jwt_expired": signer.token(project=pa, exp=now - 60),
        "jwt_not_yet_valid": signer.token(project=pa, nbf=now + 120),
        "jwt_no_exp": signer.token(project=pa, exp=None),
        "jwt_bad_issuer": signer.token(project=pa, iss="https://evil.test"),
        "jwt_bad_audience": signer.token(project=pa, aud="other"),
        "jwt_bad_audience ": signer.token(project=pa, aud=["a", "b"]),
        "jwt_alg_none": b64u(b'{"alg":"none"}') + "." + parts[1] + ".",
        # the classic confusion: HS256 "signed" with the public key's PEM
        "jwt_alg_mismatch": signer.token(project=pa, alg="HS256", header={"kid": "pk-1"},
                                         sign_with=signer.pem),
        "jwt_bad_signature": signer.token(project=pa, alg="HS256", sign_with=signer.pem),
        "jwt_unknown_kid": signer.token(project=pa, header={"kid": "nope"}),
        "jwt_bad_signature ": f"{parts[0]}.{tampered_payload}.{parts[2]}",
        "jwt_segments": good + ".AAAA",
        "jwt_segments ": f"{parts[0]}.{parts[1]}",
        "jwt_base64": good[:10] + "+" + good[11:],
        "jwt_crit": signer.token(project=pa, header={"crit": ["exp"]}),
        "jwt_bad_project": signer.token(project="Not_A_Project"),
        "jwt_unknown_project": signer.token(project=f"ghost-{suffix}"),
        "jwt_alg_unsupported": signer.token(project=pa, alg="HS512", sign_with=b"k" * 64),
    }
    if signer.alg == "ES256":
        bad["jwt_bad_signature  "] = signer.token(project=pa, der=True)
    st, hd, ref = d.http("GET", "/v1/jobs")
    assert st == 401
    for what, t in bad.items():
        st, h, body = d.http("GET", "/v1/jobs", headers=tok(t))
        assert st == 401, (what, st, body)
        assert h.get("www-authenticate") == 'Bearer realm="stageline"', (what, h)
        assert body == ref, (what, body, ref)
    # a token over 8 KiB never reaches auth: the HTTP parser refuses a header
    # field that long (jwt.c refuses it too, see test_jwt.c)
    st, h, body = d.http("GET", "/v1/jobs", headers=tok(signer.token(project=pa, pad="x" * 9000)))
    assert st == 431, (st, body)
    want = {w.strip() for w in bad}

    def reasons():
        got = {l.get("reason") for l in d.log_lines() if l.get("event") == "auth.denied"}
        return got if want <= got else None

    wait_for(reasons, 5.0, 0.05, f"auth.denied lines with the reasons {sorted(want)}")
    # no token reaches the log, only reasons
    text = d.log_text()
    for t in list(bad.values()) + [good]:
        sig = t.split(".")[-1] if t.count(".") >= 2 else t
        if len(sig) > 20:
            assert sig not in text, "a token signature reached the log"
    assert parts[1] not in text


def test_jwt_config_errors(daemon, tmp_path):
    cfg, _ = daemon.write_config({"auth.jwt.enabled": True, "auth.jwt.leeway": "6m",
                                  "auth.jwt.hs256_secret": "short"}, name="badjwt")
    r = daemon.run(["-c", cfg, "--check-config"])
    assert r.returncode != 0
    for want in ("auth.jwt.issuer", "auth.jwt.audience", "auth.jwt.leeway",
                 "auth.jwt.hs256_secret"):
        assert want in r.stderr + r.stdout, (want, r.stderr)


def scrape(port):
    st, _, body = http_request(port, "GET", "/metrics")
    assert st == 200, body[:300]
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("stageline_auth_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_failed_auth_rate_limit(daemon, pg):
    suffix = secrets.token_hex(4)
    mport = free_port()
    d = start(daemon, auth=True, config={
        "auth.max_failures": 3, "auth.failure_window": "2s",
        "server.metrics_listen": f"127.0.0.1:{mport}"})
    projects(pg, f"rl-{suffix}")
    with db(pg) as cur:
        good = insert_key(cur, f"rl-{suffix}", ["jobs:read"])
    bad = make_key()[0]  # well-formed, unknown
    assert get(d, "/v1/jobs", bearer(good))[0] == 200
    # no header is no guess: not counted
    for _ in range(5):
        assert get(d, "/v1/jobs")[0] == 401
    for _ in range(3):
        assert get(d, "/v1/jobs", bearer(bad))[0] == 401
    # blocked: a good key too, and whatever the route
    for h in (bearer(good), bearer(bad), {}):
        st, hd, doc, raw = get(d, "/v1/jobs", h)
        doc = problem(st, hd, raw, 429)
        assert doc["type"] == PROBLEM + "rate-limited", doc
        assert "too many failed authentication attempts" in doc["detail"], doc
        assert 1 <= int(hd["retry-after"]) <= 2, hd
    assert d.http("GET", "/healthz")[0] == 200  # unauthenticated routes are not limited
    m = scrape(mport)
    assert m.get("stageline_auth_rate_limited_total") == 3, m
    assert m.get('stageline_auth_failures_total{reason="unknown_key"}') == 3, m
    assert m.get('stageline_auth_failures_total{reason="missing"}') == 5, m
    # before any database lookup: with PostgreSQL down it is still 429, not 503
    try:
        pg.stop("fast")
        st, hd, _, raw = get(d, "/v1/jobs", bearer(good))
        assert st == 429, raw
    finally:
        if not pg.running:
            pg.start()
    assert d.find_log(lambda l: l["event"] == "auth.blocked" and l.get("peer") == "127.0.0.1")

    # after the window the address starts over
    wait_for(lambda: get(d, "/v1/jobs", bearer(good))[0] == 200, 10.0, 0.25,
             "200 once the block is over (and PostgreSQL is back)")
    # a success does not reset the count
    assert get(d, "/v1/jobs", bearer(bad))[0] == 401
    assert get(d, "/v1/jobs", bearer(bad))[0] == 401
    assert get(d, "/v1/jobs", bearer(good))[0] == 200
    assert get(d, "/v1/jobs", bearer(bad))[0] == 401
    assert get(d, "/v1/jobs", bearer(good))[0] == 429
