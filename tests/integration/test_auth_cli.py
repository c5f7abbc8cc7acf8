"""API keys end to end: the `stageline` CLI's bootstrap commands (projects,
keys) against a migrated database, and the daemon's Bearer-key check on a
route that requires it (GET /v1/jobs, jobs:read).

Wiring these tests wait for, and skip without:
  STAGELINE_CLI    the built `stageline` binary (make check sets it);
  STAGELINED       the daemon, which must know `--migrate-only` (it creates
                   the schema the CLI talks to);
  GET /v1/jobs     an authenticated route (the HTTP tests skip while it 404s).
"""

import hashlib
import json
import os
import re
import subprocess
import time
import zlib

import pytest

from slhelpers import PROBLEM_CT, wait_for

KEY_RE = re.compile(r"^sl_([0-9A-Za-z]{8})_([0-9A-Za-z]{32})([0-9A-Za-z]{6})$")
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DBNAME = "authcli"


def b62(v, width=6):
    out = ""
    for _ in range(width):
        out = B62[v % 62] + out
        v //= 62
    assert v == 0
    return out


def make_key(prefix, secret):
    """A key with a valid checksum (the server can't tell it from a real one
    until it looks the prefix up)."""
    body = f"sl_{prefix}_{secret}"
    return body + b62(zlib.crc32(body.encode()))


def key_is_valid(key):
    m = KEY_RE.match(key)
    return bool(m) and b62(zlib.crc32(key[:44].encode())) == m.group(3)


# --------------------------------------------------------------------------
# fixtures


def _clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def cli_path():
    path = os.environ.get("STAGELINE_CLI")
    if not path:
        pytest.skip("STAGELINE_CLI is not set (make check sets it to the built `stageline`)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"STAGELINE_CLI={path} is not an executable file")
    return path


def _migrate(pg, dbname):
    daemon = os.environ.get("STAGELINED")
    if not daemon:
        pytest.skip("STAGELINED is not set: the schema comes from `stagelined --migrate-only`")
    r = subprocess.run([daemon, "--migrate-only", "--database-url", pg.url(dbname=dbname)],
                       capture_output=True, text=True, env=_clean_env(), timeout=60)
    if r.returncode == 2 and "migrate-only" in r.stderr:
        pytest.skip("stagelined does not know --migrate-only yet")
    assert r.returncode == 0, f"stagelined --migrate-only failed ({r.returncode}):\n{r.stderr}"


@pytest.fixture(scope="module")
def db(pg):
    """A database of its own, migrated; the module's tests share it (each
    uses its own project names)."""
    pg.psql(f"DROP DATABASE IF EXISTS {DBNAME}")
    pg.psql(f"CREATE DATABASE {DBNAME}")
    _migrate(pg, DBNAME)
    return pg.url(dbname=DBNAME)


@pytest.fixture(scope="module")
def empty_db(pg):
    """A database with no stageline schema."""
    pg.psql("DROP DATABASE IF EXISTS authcli_empty")
    pg.psql("CREATE DATABASE authcli_empty")
    return pg.url(dbname="authcli_empty")


class Cli:
    def __init__(self, path, url, tmp_path):
        self.path = path
        self.url = url
        self.tmp_path = str(tmp_path)

    def run(self, *args, url=True, env=None, timeout=30):
        argv = [self.path]
        if url:
            argv += ["--database-url", self.url]
        argv += list(args)
        r = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(env),
                           timeout=timeout, cwd=self.tmp_path)
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in r.stderr, r.stderr
        return r

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def new_key(self, project, scopes, *extra):
        r = self.ok("keys", "create", "--project", project, "--scopes", scopes, *extra)
        key = r.stdout.strip()
        assert key_is_valid(key), r.stdout
        return key


@pytest.fixture
def cli(cli_path, db, tmp_path):
    return Cli(cli_path, db, tmp_path)


def psql_db(pg, dbname, query):
    r = subprocess.run(["psql", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", dbname,
                        "-XAtc", query], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --------------------------------------------------------------------------
# the CLI without a database


def test_help_and_usage_errors(cli_path, tmp_path):
    c = Cli(cli_path, "", tmp_path)
    r = c.run("--help", url=False)
    assert r.returncode == 0 and "usage: stageline" in r.stdout, r
    for cmd in (["projects", "create"], ["projects", "list"], ["keys", "create"],
                ["keys", "list"], ["keys", "revoke"]):
        r = c.run(*cmd, "--help", url=False)
        assert r.returncode == 0, (cmd, r)
        assert r.stdout.startswith(f"usage: stageline {' '.join(cmd)}"), (cmd, r.stdout)
    r = c.run("frobnicate", url=False)
    assert r.returncode == 2 and "unknown command" in r.stderr and "usage:" in r.stderr, r
    r = c.run(url=False)
    assert r.returncode == 2 and "usage:" in r.stderr, r
    r = c.run("keys", "frob", url=False)
    assert r.returncode == 2 and "usage:" in r.stderr, r
    r = c.run("--bogus", "projects", "list", url=False)
    assert r.returncode == 2, r
    # argument errors are found before any connection is tried
    for args in (["projects", "create"], ["projects", "create", "Bad_Name"],
                 ["keys", "create", "--project", "p"],
                 ["keys", "create", "--project", "p", "--scopes", "jobs:delete"],
                 ["keys", "create", "--project", "p", "--scopes", "jobs:read", "--expires", "soon"],
                 ["keys", "list"], ["keys", "revoke"], ["keys", "revoke", "abc"],
                 ["projects", "list", "--scopes", "admin"]):
        r = c.run("--database-url", "postgresql://nobody@/x?host=/nonexistent", *args, url=False)
        assert r.returncode == 2, (args, r)
        assert "cannot connect" not in r.stderr, (args, r.stderr)


def test_cannot_connect_is_exit_1_without_the_password(cli_path, tmp_path):
    c = Cli(cli_path, "", tmp_path)
    r = c.run("--database-url", "postgresql://u:s3cr3tpw@/x?host=/nonexistent-dir&port=1",
              "projects", "list", url=False)
    assert r.returncode == 1, r
    assert "cannot connect to the database" in r.stderr, r.stderr
    assert "s3cr3tpw" not in r.stderr + r.stdout


# --------------------------------------------------------------------------
# projects


def test_projects_create_and_list(cli):
    r = cli.ok("projects", "create", "acme", "--name", "Acme Corp")
    assert "acme" in r.stdout
    r = cli.ok("projects", "create", "globex", "--json")
    doc = json.loads(r.stdout)
    assert doc["id"] == "globex" and doc["name"] == "globex", doc
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", doc["created_at"]), doc

    rows = json.loads(cli.ok("projects", "list", "--json").stdout)
    by_id = {p["id"]: p for p in rows}
    assert by_id["acme"]["name"] == "Acme Corp" and by_id["acme"]["active_keys"] == 0, rows
    assert "globex" in by_id
    text = cli.ok("projects", "list").stdout
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["ID", "NAME"], text
    assert any(ln.split()[0] == "acme" and "Acme Corp" in ln for ln in lines[1:]), text
    # --json works before the command too
    assert json.loads(cli.ok("--json", "projects", "list").stdout) == rows


def test_duplicate_project_is_exit_1(cli):
    cli.ok("projects", "create", "dup")
    r = cli.run("projects", "create", "dup")
    assert r.returncode == 1, r
    assert "already exists" in r.stderr and "dup" in r.stderr, r.stderr
    assert r.stdout == ""


def test_schema_missing_is_explained(cli_path, empty_db, tmp_path):
    c = Cli(cli_path, empty_db, tmp_path)
    for args in (["projects", "list"], ["projects", "create", "x"],
                 ["keys", "list", "--project", "x"]):
        r = c.run(*args)
        assert r.returncode == 1, (args, r)
        assert "the database has no stageline schema: run `stagelined --migrate-only` first" \
            in r.stderr, (args, r.stderr)


def test_database_url_precedence(cli, empty_db, tmp_path):
    """--database-url > STAGELINE_DATABASE_URL > -c file > default: the
    migrated database answers, the empty one says the schema is missing."""
    good, empty = cli.url, empty_db
    cfg = os.path.join(str(tmp_path), "stageline.yaml")

    def write_cfg(url):
        with open(cfg, "w") as f:
            f.write(f"database:\n  url: {json.dumps(url)}\n")

    def works(r):
        return r.returncode == 0

    write_cfg(empty)
    assert works(cli.run("--database-url", good, "-c", cfg, "projects", "list", url=False,
                         env={"STAGELINE_DATABASE_URL": empty}))
    assert works(cli.run("-c", cfg, "projects", "list", url=False,
                         env={"STAGELINE_DATABASE_URL": good}))
    write_cfg(good)
    assert works(cli.run("-c", cfg, "projects", "list", url=False))
    r = cli.run("-c", cfg, "projects", "list", url=False, env={"STAGELINE_DATABASE_URL": empty})
    assert r.returncode == 1 and "no stageline schema" in r.stderr, r
    r = cli.run("-c", os.path.join(str(tmp_path), "missing.yaml"), "projects", "list", url=False)
    assert r.returncode == 1, r


# --------------------------------------------------------------------------
# keys


def test_keys_create_prints_a_valid_key_once(cli, pg):
    cli.ok("projects", "create", "keys-a")
    r = cli.ok("keys", "create", "--project", "keys-a", "--scopes", "jobs:read,jobs:write",
               "--name", "ci")
    key = r.stdout.strip()
    assert r.stdout == key + "\n", "stdout must be the key alone"
    assert key_is_valid(key), key
    assert "only time" in r.stderr and "cannot be shown again" in r.stderr, r.stderr
    assert key not in r.stderr
    prefix, secret = KEY_RE.match(key).group(1), KEY_RE.match(key).group(2)

    row = psql_db(pg, DBNAME, f"SELECT project_id, encode(hash, 'hex'), "
                              f"array_to_string(scopes, ','), name, expires_at IS NULL "
                              f"FROM api_keys WHERE prefix = '{prefix}'").strip()
    project, hash_hex, scopes, name, no_expiry = row.split("|")
    assert project == "keys-a" and scopes == "jobs:read,jobs:write" and name == "ci", row
    assert no_expiry == "t"
    assert hash_hex == hashlib.sha256(secret.encode()).hexdigest()
    dump = psql_db(pg, DBNAME, "SELECT row_to_json(k)::text FROM api_keys k")
    assert secret not in dump

    # two keys never share anything but the shape
    other = cli.new_key("keys-a", "jobs:read")
    assert other[3:11] != prefix and other[12:44] != secret


def test_keys_create_json_and_expiry(cli):
    cli.ok("projects", "create", "keys-b")
    r = cli.ok("keys", "create", "--project", "keys-b", "--scopes", "admin , jobs:read",
               "--expires", "30d", "--json")
    doc = json.loads(r.stdout)
    assert key_is_valid(doc["key"]) and doc["prefix"] == doc["key"][3:11], doc
    assert doc["project"] == "keys-b" and doc["scopes"] == ["jobs:read", "admin"], doc
    created = time.strptime(doc["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = time.strptime(doc["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    days = (time.mktime(expires) - time.mktime(created)) / 86400
    assert abs(days - 30) < 0.01, doc
    assert "only time" in r.stderr


def test_keys_create_errors(cli):
    r = cli.run("keys", "create", "--project", "no-such-project", "--scopes", "jobs:read")
    assert r.returncode == 1 and "no project 'no-such-project'" in r.stderr, r
    assert r.stdout == ""
    r = cli.run("keys", "create", "--project", "keys-a", "--scopes", "jobs:read,root")
    assert r.returncode == 2 and "unknown scope 'root'" in r.stderr, r


def test_keys_list_shows_prefix_never_secret_or_hash(cli, pg):
    cli.ok("projects", "create", "keys-c")
    key = cli.new_key("keys-c", "jobs:read", "--name", "reader", "--expires", "2h")
    prefix, secret = key[3:11], key[12:44]
    hash_hex = hashlib.sha256(secret.encode()).hexdigest()

    text = cli.ok("keys", "list", "--project", "keys-c").stdout
    assert f"sl_{prefix}_" in text and "reader" in text and "jobs:read" in text, text
    assert "active" in text
    rows = json.loads(cli.ok("keys", "list", "--project", "keys-c", "--json").stdout)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["prefix"] == prefix and row["name"] == "reader" and row["scopes"] == ["jobs:read"]
    assert row["status"] == "active" and row["revoked_at"] is None and row["expires_at"], row
    assert "hash" not in row and "key" not in row and "secret" not in row, row
    for out in (text, json.dumps(rows)):
        assert secret not in out and hash_hex not in out and key not in out
        assert secret[:16] not in out

    r = cli.run("keys", "list", "--project", "nope")
    assert r.returncode == 1 and "no project 'nope'" in r.stderr, r


def test_keys_revoke(cli):
    cli.ok("projects", "create", "keys-d")
    key = cli.new_key("keys-d", "jobs:read")
    keep = cli.new_key("keys-d", "jobs:read")
    prefix = key[3:11]
    r = cli.ok("keys", "revoke", f"sl_{prefix}_")
    assert prefix in r.stdout and "revoked" in r.stdout, r.stdout
    rows = {k["prefix"]: k for k in json.loads(cli.ok("keys", "list", "--project", "keys-d",
                                                      "--json").stdout)}
    assert rows[prefix]["status"] == "revoked" and rows[prefix]["revoked_at"], rows
    assert rows[keep[3:11]]["status"] == "active", rows
    # again: harmless, and says so
    r = cli.ok("keys", "revoke", prefix, "--json")
    assert json.loads(r.stdout)["already_revoked"] is True, r.stdout
    r = cli.run("keys", "revoke", "ZZZZZZZZ")
    assert r.returncode == 1 and "no key" in r.stderr, r
    active = {p["id"]: p for p in json.loads(cli.ok("projects", "list", "--json").stdout)}
    assert active["keys-d"]["active_keys"] == 1


# --------------------------------------------------------------------------
# the daemon's side: GET /v1/jobs requires jobs:read


@pytest.fixture
def authd(daemon, db):
    # every bad key comes from 127.0.0.1: no failed-auth rate limit here
    # (test_jwt_auth.py tests it)
    d = daemon({"database.url": db, "auth.max_failures": 0}, wait_ready=True)
    st, _, body = d.http("GET", "/v1/jobs")
    if st == 404:
        pytest.skip("GET /v1/jobs is not routed yet: no authenticated route to test")
    return d


def _get(d, key=None, header=None, method="GET"):
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if header is not None:
        headers["Authorization"] = header
    return d.http(method, "/v1/jobs", headers=headers)


def test_every_bad_key_gets_the_same_401(cli, authd):
    cli.ok("projects", "create", "http-a")
    good = cli.new_key("http-a", "jobs:read")
    revoked = cli.new_key("http-a", "jobs:read")
    expired = cli.new_key("http-a", "jobs:read", "--expires", "1s")
    cli.ok("keys", "revoke", revoked[3:11])
    prefix, secret = good[3:11], good[12:44]
    flipped = good[:20] + ("A" if good[20] != "A" else "B") + good[21:]
    wrong_secret = make_key(prefix, ("b" if secret[0] != "b" else "c") + secret[1:])
    unknown = make_key("ZZZZZZZZ", secret)
    wait_for(lambda: _get(authd, expired)[0] == 401, 5.0, 0.2, "the 1 s key to expire")

    st, _, _ = _get(authd, good)
    assert st == 200, "a valid jobs:read key must pass"

    cases = {
        "missing header": None,
        "another scheme": f"Basic {good}",
        "no token": "Bearer ",
        "malformed": "Bearer sl_short_key",
        "bad checksum": f"Bearer {flipped}",
        "unknown prefix": f"Bearer {unknown}",
        "wrong secret": f"Bearer {wrong_secret}",
        "revoked": f"Bearer {revoked}",
        "expired": f"Bearer {expired}",
    }
    bodies = {}
    for what, header in cases.items():
        if header is None:
            st, h, body = authd.http("GET", "/v1/jobs")
        else:
            st, h, body = _get(authd, header=header)
        assert st == 401, (what, st, body)
        assert h.get("content-type", "").split(";")[0] == PROBLEM_CT, (what, h)
        assert h.get("www-authenticate") == 'Bearer realm="stageline"', (what, h)
        bodies[what] = body
    first = bodies["missing header"]
    for what, body in bodies.items():
        assert body == first, f"401 for {what!r} differs:\n{body!r}\nvs\n{first!r}"
    doc = json.loads(first)
    assert doc["type"] == "urn:stageline:problem:unauthorized" and doc["title"] == "Unauthorized"
    assert doc["detail"] == "a valid API key is required"

    # the log names each reason; info lines are batched to the end of the loop pass, which may come
    # after the reply has reached us, so wait for the last ones
    want = {"malformed", "bad_checksum", "unknown_key", "wrong_secret", "revoked", "expired"}

    def reasons():
        got = {l.get("reason") for l in authd.log_lines() if l.get("event") == "auth.denied"}
        return got if want <= got else None

    wait_for(reasons, 5.0, 0.05, f"auth.denied lines with the reasons {sorted(want)}")
    # the log names the reason, with the public prefix only
    text = authd.log_text()
    for k in (good, revoked, expired, wrong_secret, unknown):
        assert k[12:44] not in text, "a key's secret reached the log"


def test_missing_scope_is_403(cli, authd):
    cli.ok("projects", "create", "http-b")
    writer = cli.new_key("http-b", "jobs:write")
    st, h, body = _get(authd, writer)
    assert st == 403, body
    doc = json.loads(body)
    assert doc["type"] == "urn:stageline:problem:forbidden", doc
    assert "jobs:read" in doc["detail"] and doc.get("missing_scopes") == ["jobs:read"], doc
    assert "www-authenticate" not in h


def test_revocation_takes_effect_within_the_cache_ttl(cli, authd):
    cli.ok("projects", "create", "http-c")
    key = cli.new_key("http-c", "jobs:read")
    assert _get(authd, key)[0] == 200
    t0 = time.monotonic()
    cli.ok("keys", "revoke", key[3:11])
    # this instance may have the key cached for up to 10 s (auth cache TTL)
    wait_for(lambda: _get(authd, key)[0] == 401, 15.0, 0.25, "401 after the revocation")
    assert time.monotonic() - t0 < 12.0


def test_expired_key_is_401(cli, authd, pg):
    cli.ok("projects", "create", "http-d")
    key = cli.new_key("http-d", "jobs:read", "--expires", "2s")
    assert _get(authd, key)[0] == 200
    # expiry is checked on every request, cached or not
    wait_for(lambda: _get(authd, key)[0] == 401, 6.0, 0.2, "401 once the key expired")


def test_last_used_at_is_recorded(cli, authd, pg):
    cli.ok("projects", "create", "http-e")
    key = cli.new_key("http-e", "jobs:read")
    rows = json.loads(cli.ok("keys", "list", "--project", "http-e", "--json").stdout)
    assert rows[0]["last_used_at"] is None
    assert _get(authd, key)[0] == 200

    def used():
        rows = json.loads(cli.ok("keys", "list", "--project", "http-e", "--json").stdout)
        return rows[0]["last_used_at"]

    wait_for(used, 5.0, 0.1, "last_used_at to be set")


# --------------------------------------------------------------------------
# keys create --expires-in, keys rotate


def test_keys_create_expires_in(cli):
    cli.ok("projects", "create", "rot-a")
    r = cli.ok("keys", "create", "--project", "rot-a", "--scopes", "jobs:read", "--expires-in",
               "12h", "--json")
    doc = json.loads(r.stdout)
    created = time.strptime(doc["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    expires = time.strptime(doc["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(time.mktime(expires) - time.mktime(created) - 12 * 3600) <= 1, doc
    for bad in ("soon", "0s", "-1h", "12", "1y"):
        r = cli.run("keys", "create", "--project", "rot-a", "--scopes", "jobs:read",
                    "--expires-in", bad)
        assert r.returncode == 2 and "--expires-in" in r.stderr, (bad, r)


def _keys(cli, project):
    return {k["prefix"]: k for k in json.loads(cli.ok("keys", "list", "--project", project,
                                                       "--json").stdout)}


def test_keys_rotate(cli):
    cli.ok("projects", "create", "rot-b")
    old = cli.new_key("rot-b", "jobs:read,jobs:write", "--name", "deployer", "--expires-in", "30d")
    r = cli.ok("keys", "rotate", old[3:11])
    new = r.stdout.strip()
    assert key_is_valid(new) and new[3:11] != old[3:11], r.stdout
    assert "only time" in r.stderr and new not in r.stderr and old[12:44] not in r.stderr, r.stderr
    keys = _keys(cli, "rot-b")
    o, n = keys[old[3:11]], keys[new[3:11]]
    assert o["status"] == "revoked" and o["revoked_at"], o
    assert n["status"] == "active" and n["revoked_at"] is None, n
    for f in ("name", "scopes", "expires_at"):
        assert n[f] == o[f], (f, n, o)
    # a revoked key cannot be rotated; an unknown one is not there
    r = cli.run("keys", "rotate", old[3:11])
    assert r.returncode == 1 and "revoked" in r.stderr and r.stdout == "", r
    r = cli.run("keys", "rotate", "ZZZZZZZZ")
    assert r.returncode == 1 and "no key" in r.stderr, r
    assert len(_keys(cli, "rot-b")) == 2, "a refused rotation creates nothing"


def test_keys_rotate_with_grace_and_json(cli):
    cli.ok("projects", "create", "rot-c")
    old = cli.new_key("rot-c", "jobs:read")
    r = cli.ok("keys", "rotate", f"sl_{old[3:11]}_", "--grace", "1h", "--json")
    doc = json.loads(r.stdout)
    assert key_is_valid(doc["key"]) and doc["prefix"] == doc["key"][3:11], doc
    assert doc["project"] == "rot-c" and doc["scopes"] == ["jobs:read"], doc
    assert doc["expires_at"] is None, "the new key keeps the old one's expiry (never)"
    rep = doc["replaces"]
    assert rep["prefix"] == old[3:11] and rep["revoked_at"] is None and rep["expires_at"], rep
    o = _keys(cli, "rot-c")[old[3:11]]
    assert o["status"] == "active" and o["expires_at"] == rep["expires_at"], o
    left = time.mktime(time.strptime(rep["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - \
        time.mktime(time.strptime(doc["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(left - 3600) <= 1, (rep, doc)
    # a second rotation with a longer grace does not lengthen the old key's life
    again = json.loads(cli.ok("keys", "rotate", old[3:11], "--grace", "7200", "--json").stdout)
    assert again["replaces"]["expires_at"] == rep["expires_at"], again
    assert again["expires_at"] == rep["expires_at"], "the replacement inherits that expiry"


def test_keys_rotate_usage_errors(cli_path, tmp_path):
    c = Cli(cli_path, "", tmp_path)
    r = c.run("keys", "rotate", "--help", url=False)
    assert r.returncode == 0 and r.stdout.startswith("usage: stageline keys rotate"), r
    for args in (["keys", "rotate"], ["keys", "rotate", "abc"], ["keys", "rotate", "a", "b"],
                 ["keys", "rotate", "ABCDEFGH", "--grace", "-1"],
                 ["keys", "rotate", "ABCDEFGH", "--grace", "86401"],
                 ["keys", "rotate", "ABCDEFGH", "--grace", "2d"],
                 ["keys", "rotate", "ABCDEFGH", "--scopes", "admin"]):
        r = c.run("--database-url", "postgresql://nobody@/x?host=/nonexistent", *args, url=False)
        assert r.returncode == 2, (args, r)
        assert "cannot connect" not in r.stderr, (args, r.stderr)


def test_cli_rotation_with_grace_on_the_daemon(cli, authd):
    cli.ok("projects", "create", "rot-d")
    old = cli.new_key("rot-d", "jobs:read")
    assert _get(authd, old)[0] == 200
    t0 = time.monotonic()
    new = cli.ok("keys", "rotate", old[3:11], "--grace", "2").stdout.strip()
    assert _get(authd, new)[0] == 200
    # The old key lapses after the grace; the daemon may hold its row (with
    # the old expiry) for up to its cache TTL (10 s): the CLI can't tell it.
    wait_for(lambda: _get(authd, old)[0] == 401, 15.0, 0.2, "the old key to lapse")
    assert time.monotonic() - t0 < 13.0
    assert _get(authd, new)[0] == 200
