"""The key-lifecycle API (/v1/keys, admin scope) end to end: a daemon with
auth on, keys bootstrapped with the `stageline` CLI, and every answer
checked — create, list, read, revoke, rotate (with and without a grace
period), expiry, project isolation, scopes, strict validation — plus the
audit log lines and the rule that a secret never reaches the daemon's log.
Bodies are also validated against proto/openapi.yaml when python3-yaml and
python3-jsonschema are there.

Needs STAGELINED (the schema comes from `stagelined --migrate-only`) and
STAGELINE_CLI (the bootstrap keys)."""

import datetime
import hashlib
import json
import os
import re
import subprocess
import time
import zlib

import pytest

from slhelpers import PROBLEM_CT, UUID_RE, wait_for

DBNAME = "keysapi"
PROBLEM = "urn:stageline:problem:"
KEY_RE = re.compile(r"^sl_([0-9A-Za-z]{8})_([0-9A-Za-z]{32})([0-9A-Za-z]{6})$")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_FIELDS = {"id", "prefix", "name", "scopes", "created_at", "expires_at", "last_used_at",
              "revoked_at", "status"}

try:
    import jsonschema
    import yaml  # noqa: F401  (make_snapshots needs it)

    import make_snapshots
except ImportError:  # the contract checks are skipped, the behaviour is not
    jsonschema = None


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    return env


def key_is_valid(key):
    m = KEY_RE.match(key)
    if not m:
        return False
    v, out = zlib.crc32(key[:44].encode()), ""
    for _ in range(6):
        out = B62[v % 62] + out
        v //= 62
    return out == m.group(3)


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def db(pg):
    daemon = os.environ.get("STAGELINED")
    if not daemon:
        pytest.skip("STAGELINED is not set")
    pg.psql(f"DROP DATABASE IF EXISTS {DBNAME}")
    pg.psql(f"CREATE DATABASE {DBNAME}")
    url = pg.url(dbname=DBNAME)
    r = subprocess.run([daemon, "--migrate-only", "--database-url", url], capture_output=True,
                       text=True, env=_clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    return url


@pytest.fixture(scope="module")
def cli_path():
    path = os.environ.get("STAGELINE_CLI")
    if not path:
        pytest.skip("STAGELINE_CLI is not set (make check sets it to the built `stageline`)")
    return path


def cli(cli_path, db, *args):
    r = subprocess.run([cli_path, "--database-url", db, *args], capture_output=True, text=True,
                       env=_clean_env(), timeout=30)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.strip()


@pytest.fixture
def env(daemon, db, cli_path, pg):
    return Env(daemon({"database.url": db, "auth.enabled": True}, wait_ready=True), db,
               cli_path, pg)


@pytest.fixture(scope="module")
def api():
    if jsonschema is None:
        return None
    return make_snapshots.load_openapi()


class Env:
    """The daemon, the CLI and every secret the test saw (for the log scan)."""

    def __init__(self, d, db, cli_path, pg):
        self.d, self.db, self.cli_path, self.pg = d, db, cli_path, pg
        self.secrets = []

    def project(self, name, scopes="admin,jobs:read,jobs:write"):
        """A new project and a bootstrap key for it (from the CLI)."""
        cli(self.cli_path, self.db, "projects", "create", name)
        return self.cli_key(name, scopes)

    def cli_key(self, project, scopes, *extra):
        key = cli(self.cli_path, self.db, "keys", "create", "--project", project, "--scopes",
                  scopes, *extra)
        assert key_is_valid(key), key
        self.secrets.append(key[12:44])
        return key

    def call(self, method, path, key, body=None, headers=None):
        h = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        st, hd, b = self.d.http(method, path, body=body, headers=h)
        doc = json.loads(b) if b else None
        if isinstance(doc, dict) and isinstance(doc.get("key"), str):
            self.secrets.append(doc["key"][12:44])
        return st, hd, doc

    def create(self, admin, body, want=201):
        st, hd, doc = self.call("POST", "/v1/keys", admin, body)
        assert st == want, (st, doc)
        return doc

    def jobs_status(self, key):
        return self.call("GET", "/v1/jobs", key)[0]

    def sql(self, query):
        r = subprocess.run(["psql", "-h", self.pg.dir, "-p", str(self.pg.port), "-U", "postgres",
                            "-d", DBNAME, "-XAtc", query], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def assert_no_secret_logged(self):
        text = self.d.log_text()
        assert self.secrets
        for s in self.secrets:
            assert s not in text, "a key's secret reached the daemon log"


def contract(api, method, path, status, doc, media="application/json"):
    """Validates doc against the contract's schema for that response."""
    if api is None:
        return
    op = api["paths"][path][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = make_snapshots.resolve_pointer(api, resp["$ref"])
    schema = make_snapshots.inline(api, resp["content"][media]["schema"])
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errs = [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]
    assert not errs, (method, path, status, errs, doc)


def problem(resp, status, slug):
    st, hd, doc = resp
    assert st == status, (st, doc)
    assert hd.get("content-type", "").split(";")[0] == PROBLEM_CT, hd
    assert doc["type"] == PROBLEM + slug and doc["status"] == status, doc
    return doc


def parse_ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


# --------------------------------------------------------------------------
# create, list, read


def test_create_list_get(env, api):
    admin = env.project("ka")
    doc = env.create(admin, {"name": "ci reader", "scopes": ["jobs:read"]})
    contract(api, "POST", "/v1/keys", 201, doc)
    assert set(doc) == KEY_FIELDS | {"key"}, doc
    key = doc["key"]
    assert key_is_valid(key) and doc["prefix"] == key[3:11], doc
    assert UUID_RE.match(doc["id"]) and TS_RE.match(doc["created_at"]), doc
    assert doc["name"] == "ci reader" and doc["scopes"] == ["jobs:read"], doc
    assert doc["status"] == "active" and doc["expires_at"] is None, doc
    assert doc["revoked_at"] is None and doc["last_used_at"] is None, doc
    # only the SHA-256 of the secret is stored
    row = env.sql(f"SELECT project_id, encode(hash, 'hex') FROM api_keys "
                  f"WHERE prefix = '{doc['prefix']}'")
    assert row == "ka|" + hashlib.sha256(key[12:44].encode()).hexdigest(), row

    assert env.jobs_status(key) == 200, "the new key works on /v1/jobs"

    st, hd, page = env.call("GET", "/v1/keys", admin)
    assert st == 200, page
    contract(api, "GET", "/v1/keys", 200, page)
    assert page["has_more"] is False
    by_prefix = {k["prefix"]: k for k in page["data"]}
    assert set(by_prefix) == {admin[3:11], doc["prefix"]}, page
    listed = by_prefix[doc["prefix"]]
    assert set(listed) == KEY_FIELDS, listed
    assert key[12:44] not in json.dumps(page), "the list shows a secret"
    # newest first
    assert page["data"][0]["prefix"] == doc["prefix"], page

    st, _, one = env.call("GET", f"/v1/keys/{doc['prefix']}", admin)
    assert st == 200, one
    contract(api, "GET", "/v1/keys/{prefix}", 200, one)
    assert {k: v for k, v in one.items() if k != "last_used_at"} == \
        {k: v for k, v in doc.items() if k not in ("key", "last_used_at")}, (one, doc)
    wait_for(lambda: env.call("GET", f"/v1/keys/{doc['prefix']}", admin)[2]["last_used_at"],
             5.0, 0.1, "last_used_at after the key was used")
    line = env.d.wait_log(lambda l: l["event"] == "key.create", what="key.create")
    assert line["level"] == "info" and line["project_id"] == "ka", line
    assert line["key_prefix"] == doc["prefix"] and line["actor_key_prefix"] == admin[3:11], line
    assert line["scopes"] == "jobs:read" and line["expires_at"] is None, line
    env.assert_no_secret_logged()


def test_scopes_are_enforced(env, api):
    admin = env.project("kb")
    reader = env.create(admin, {"scopes": ["jobs:read"]})["key"]
    writer = env.create(admin, {"scopes": ["jobs:write", "jobs:read", "jobs:write"]})
    assert writer["scopes"] == ["jobs:read", "jobs:write"], writer
    # a jobs:read key cannot submit
    doc = problem(env.call("POST", "/v1/jobs", reader, {"pipeline": "nope"}), 403, "forbidden")
    assert doc["missing_scopes"] == ["jobs:write"], doc
    # the writer gets past auth (to the validation of its body)
    assert env.call("POST", "/v1/jobs", writer["key"], {"pipeline": "nope"})[0] == 422
    # a key without admin gets 403 on every /v1/keys route
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"),
                         ("GET", f"/v1/keys/{reader[3:11]}"),
                         ("DELETE", f"/v1/keys/{reader[3:11]}"),
                         ("POST", f"/v1/keys/{reader[3:11]}/rotate")):
        body = {"scopes": ["jobs:read"]} if path == "/v1/keys" and method == "POST" else None
        doc = problem(env.call(method, path, writer["key"], body), 403, "forbidden")
        assert doc["missing_scopes"] == ["admin"], doc
        contract(api, method, path.replace(reader[3:11], "{prefix}"), 403, doc,
                 PROBLEM_CT)
    assert problem(env.call("GET", "/v1/keys", None), 401, "unauthorized")
    # no key mints a key with a scope it lacks itself
    only_admin = env.cli_key("kb", "admin")
    doc = problem(env.call("POST", "/v1/keys", only_admin, {"scopes": ["jobs:write", "admin"]}),
                  403, "forbidden")
    assert doc["missing_scopes"] == ["jobs:write"], doc
    admin2 = env.create(only_admin, {"scopes": ["admin"]})
    assert admin2["scopes"] == ["admin"]
    # nor rotates one into its own hands
    doc = problem(env.call("POST", f"/v1/keys/{writer['prefix']}/rotate", only_admin), 403,
                  "forbidden")
    assert doc["missing_scopes"] == ["jobs:read", "jobs:write"], doc
    assert env.jobs_status(writer["key"]) == 200, "a refused rotation changes nothing"
    # but may revoke it
    assert env.call("DELETE", f"/v1/keys/{writer['prefix']}", only_admin)[0] == 204
    assert env.jobs_status(writer["key"]) == 401
    env.assert_no_secret_logged()


# --------------------------------------------------------------------------
# revoke, rotate, expiry


def test_revoke_takes_effect_at_once(env, api):
    admin = env.project("kc")
    doc = env.create(admin, {"scopes": ["jobs:read"], "name": "gone"})
    key, prefix = doc["key"], doc["prefix"]
    assert env.jobs_status(key) == 200  # now cached on this instance
    st, hd, body = env.call("DELETE", f"/v1/keys/{prefix}", admin)
    assert st == 204 and body is None, (st, body)
    assert env.jobs_status(key) == 401, "a revoked key must fail at once on this instance"
    assert env.call("DELETE", f"/v1/keys/{prefix}", admin)[0] == 204, "revoke is idempotent"
    one = env.call("GET", f"/v1/keys/{prefix}", admin)[2]
    assert one["status"] == "revoked" and TS_RE.match(one["revoked_at"]), one
    doc = problem(env.call("POST", f"/v1/keys/{prefix}/rotate", admin), 409, "key-not-active")
    contract(api, "POST", "/v1/keys/{prefix}/rotate", 409, doc, PROBLEM_CT)
    for method, path in (("GET", "/v1/keys/ZZZZZZZZ"), ("DELETE", "/v1/keys/ZZZZZZZZ"),
                         ("POST", "/v1/keys/ZZZZZZZZ/rotate"), ("GET", "/v1/keys/short"),
                         ("DELETE", "/v1/keys/sl_ZZZZZZZZ_")):
        doc = problem(env.call(method, path, admin), 404, "not-found")
    contract(api, "DELETE", "/v1/keys/{prefix}", 404, doc, PROBLEM_CT)
    line = env.d.wait_log(lambda l: l["event"] == "key.revoke", what="key.revoke")
    assert line["project_id"] == "kc" and line["key_prefix"] == prefix, line
    assert line["actor_key_prefix"] == admin[3:11] and line["level"] == "info", line
    env.assert_no_secret_logged()


def test_rotate_without_grace(env, api):
    admin = env.project("kd")
    at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    old = env.create(admin, {"scopes": ["jobs:read", "jobs:write"], "name": "deployer",
                             "expires_at": at})
    assert parse_ts(old["expires_at"]) == parse_ts(at.replace("Z", ".000000Z")), old
    assert env.jobs_status(old["key"]) == 200
    st, hd, new = env.call("POST", f"/v1/keys/{old['prefix']}/rotate", admin)
    assert st == 201, new
    contract(api, "POST", "/v1/keys/{prefix}/rotate", 201, new)
    assert hd.get("location") == f"/v1/keys/{new['prefix']}", hd
    assert "no-store" in hd.get("cache-control", ""), hd
    assert key_is_valid(new["key"]) and new["prefix"] != old["prefix"], new
    for f in ("name", "scopes", "expires_at"):
        assert new[f] == old[f], (f, new, old)
    assert new["status"] == "active" and new["revoked_at"] is None, new
    assert new["replaces"]["prefix"] == old["prefix"], new
    assert new["replaces"]["status"] == "revoked", new
    assert new["replaces"]["expires_at"] == old["expires_at"], new
    assert env.jobs_status(old["key"]) == 401, "grace 0: the old key fails at once"
    assert env.jobs_status(new["key"]) == 200
    line = env.d.wait_log(lambda l: l["event"] == "key.rotate", what="key.rotate")
    assert line["key_prefix"] == old["prefix"] and line["new_key_prefix"] == new["prefix"], line
    assert line["grace_s"] == 0 and line["project_id"] == "kd", line
    env.assert_no_secret_logged()


def test_rotate_with_grace(env):
    admin = env.project("ke")
    old = env.create(admin, {"scopes": ["jobs:read"]})
    assert env.jobs_status(old["key"]) == 200
    t0 = time.monotonic()
    st, _, new = env.call("POST", f"/v1/keys/{old['prefix']}/rotate", admin, {"grace": 2})
    assert st == 201, new
    assert new["expires_at"] is None, "the new key keeps the old one's expiry (never)"
    rep = new["replaces"]
    assert rep["status"] == "active" and rep["revoked_at"] is None, rep
    left = parse_ts(rep["expires_at"]) - time.time()
    assert 0 < left <= 2.5, rep
    assert env.jobs_status(new["key"]) == 200
    if time.monotonic() - t0 < 1.5:
        assert env.jobs_status(old["key"]) == 200, "the old key works during the grace period"
    wait_for(lambda: env.jobs_status(old["key"]) == 401, 6.0, 0.1, "the old key to lapse")
    assert time.monotonic() - t0 >= 1.5
    assert env.jobs_status(new["key"]) == 200
    # a grace never lengthens a key's life: one expiring in 60 s keeps that
    short = env.create(admin, {"scopes": ["jobs:read"], "expires_in": 60})
    st, _, r2 = env.call("POST", f"/v1/keys/{short['prefix']}/rotate", admin, {"grace": 3600})
    assert st == 201 and r2["replaces"]["expires_at"] == short["expires_at"], r2
    assert r2["expires_at"] == short["expires_at"], r2
    env.assert_no_secret_logged()


def test_expiry(env):
    admin = env.project("kf")
    doc = env.create(admin, {"scopes": ["jobs:read"], "expires_in": 2})
    life = parse_ts(doc["expires_at"]) - parse_ts(doc["created_at"])
    assert 1.9 < life < 2.1, doc
    assert env.jobs_status(doc["key"]) == 200
    wait_for(lambda: env.jobs_status(doc["key"]) == 401, 6.0, 0.1, "401 once the key expired")
    one = env.call("GET", f"/v1/keys/{doc['prefix']}", admin)[2]
    assert one["status"] == "expired" and one["revoked_at"] is None, one
    problem(env.call("POST", f"/v1/keys/{doc['prefix']}/rotate", admin), 409, "key-not-active")
    env.assert_no_secret_logged()


def test_own_key_can_be_rotated_and_revoked(env):
    admin = env.project("kg")
    st, _, new = env.call("POST", f"/v1/keys/{admin[3:11]}/rotate", admin)
    assert st == 201, new
    assert env.call("GET", "/v1/keys", admin)[0] == 401, "the rotated caller key is gone"
    assert env.call("GET", "/v1/keys", new["key"])[0] == 200
    assert env.call("DELETE", f"/v1/keys/{new['prefix']}", new["key"])[0] == 204
    assert env.call("GET", "/v1/keys", new["key"])[0] == 401
    line = env.d.wait_log(lambda l: l["event"] == "key.revoke", what="key.revoke")
    assert line["own_key"] is True, line
    env.assert_no_secret_logged()


def test_another_projects_key_is_404(env):
    a = env.project("kh-a")
    b = env.project("kh-b")
    victim = env.create(a, {"scopes": ["jobs:read"]})
    p = victim["prefix"]
    for method, path in (("GET", f"/v1/keys/{p}"), ("DELETE", f"/v1/keys/{p}"),
                         ("POST", f"/v1/keys/{p}/rotate")):
        problem(env.call(method, path, b), 404, "not-found")
    assert p not in json.dumps(env.call("GET", "/v1/keys", b)[2])
    assert env.jobs_status(victim["key"]) == 200, "the other project could not touch it"
    assert env.sql(f"SELECT count(*) FROM api_keys WHERE project_id = 'kh-a'") == "2"
    env.assert_no_secret_logged()


# --------------------------------------------------------------------------
# validation


def test_validation_problems(env, api):
    admin = env.project("ki")
    future = (datetime.datetime.now(datetime.timezone.utc) +
              datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cases = [
        ({"scopes": ["jobs:delete"]}, "scopes[0]"),
        ({"scopes": []}, "scopes"),
        ({"scopes": "jobs:read"}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"scopes": ["jobs:read"], "expires_in": -5}, "expires_in"),
        ({"scopes": ["jobs:read"], "expires_in": 0}, "expires_in"),
        ({"scopes": ["jobs:read"], "expires_in": "60"}, "expires_in"),
        ({"scopes": ["jobs:read"], "expires_in": 1.5}, "expires_in"),
        ({"scopes": ["jobs:read"], "expires_at": "tomorrow"}, "expires_at"),
        ({"scopes": ["jobs:read"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"scopes": ["jobs:read"], "expires_in": 60, "expires_at": future}, "expires_at"),
        ({"scopes": ["jobs:read"], "name": 7}, "name"),
        ({"scopes": ["jobs:read"], "name": "n" * 201}, "name"),
        ({"scopes": ["jobs:read"], "project": "other"}, "project"),
        ([{"scopes": ["jobs:read"]}], "(body)"),
    ]
    for body, field in cases:
        doc = problem(env.call("POST", "/v1/keys", admin, body), 422, "validation")
        assert field in [e["field"] for e in doc["errors"]], (body, doc)
        contract(api, "POST", "/v1/keys", 422, doc, PROBLEM_CT)
    doc = problem(env.call("POST", "/v1/keys", admin, '{"scopes": ['), 400, "invalid-json")
    contract(api, "POST", "/v1/keys", 400, doc, PROBLEM_CT)
    problem(env.call("POST", "/v1/keys", admin, '{"scopes": [], "scopes": []}'), 400,
            "invalid-json")
    problem(env.call("POST", "/v1/keys", admin, "scopes=admin",
                     headers={"Content-Type": "text/plain"}), 415, "unsupported-media-type")

    target = env.create(admin, {"scopes": ["jobs:read"]})["prefix"]
    for body, field in (({"grace": -1}, "grace"), ({"grace": 86401}, "grace"),
                        ({"grace": "10"}, "grace"), ({"grace": 1, "keep": True}, "keep")):
        doc = problem(env.call("POST", f"/v1/keys/{target}/rotate", admin, body), 422,
                      "validation")
        assert field in [e["field"] for e in doc["errors"]], (body, doc)
    problem(env.call("POST", f"/v1/keys/{target}/rotate", admin, "{"), 400, "invalid-json")
    # nothing was created or changed by any refusal
    assert env.sql("SELECT count(*) FROM api_keys WHERE project_id = 'ki'") == "2"
    assert env.sql(f"SELECT revoked_at IS NULL AND expires_at IS NULL FROM api_keys "
                   f"WHERE prefix = '{target}'") == "t"


def test_list_is_capped(env):
    admin = env.project("kj")
    env.sql("INSERT INTO api_keys (id, project_id, prefix, hash, scopes, created_at)"
            " SELECT gen_random_uuid(), 'kj', 'L' || lpad(i::text, 7, '0'),"
            " decode(repeat('00', 32), 'hex'), '{jobs:read}', now() - interval '1 day'"
            " FROM generate_series(1, 1000) i")
    st, _, page = env.call("GET", "/v1/keys", admin)
    assert st == 200 and len(page["data"]) == 1000 and page["has_more"] is True, \
        (st, len(page["data"]), page.get("has_more"))
    assert page["data"][0]["prefix"] == admin[3:11], "newest first"
