"""The HTTP contract (proto/openapi.yaml) against the real daemon.

Every response the tests can provoke — health, readiness, metrics,
pipelines, a created job, a replay, a read, a 304, list pages, and the
problem responses (400, 401, 403, 404, 405, 409, 413, 415, 422, 431) — is
validated against the schema the contract gives for that operation and
status, with JSON Schema draft 2020-12 (the dialect of OpenAPI 3.1). The
contract's objects are closed (additionalProperties: false), so a field the
daemon adds or renames fails here first.

Snapshots: tests/integration/snapshots/*.schema.json are the committed
shapes of Job, JobSummary, Stage and Problem, generated from the contract by
make_snapshots.py. A snapshot that differs from what the contract generates
now fails (change the contract, regenerate, review the diff), and so does a
real response that doesn't match its snapshot.

Needs /usr/bin/python3 with python3-yaml and python3-jsonschema (Debian)."""

import hashlib
import json
import os
import re
import secrets
import string
import subprocess
import zlib

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="python3-jsonschema is not installed")

import make_snapshots  # noqa: E402  (tests/integration is on sys.path, like slhelpers)
from slhelpers import PROBLEM_CT, UUID_RE, wait_for  # noqa: E402

ROOT = make_snapshots.ROOT
DBNAME = "apischema"
JSON_CT = "application/json"

PIPELINE_YAML = """\
description: Three stages, two of them roots, one optional
params:
  lang: {type: string, required: true, description: "the language"}
  speed: {type: number, default: 1.0}
  tags: {type: array}
stages:
  - {name: fetch, module: noop, retries: 2, backoff: 250ms, timeout: 30s}
  - {name: render, module: noop, needs: [fetch], required: false, params: {quality: 3}}
  - {name: probe, module: noop}
"""

OPEN_PIPELINE_YAML = """\
stages:
  - {name: only, module: noop}
"""


# --------------------------------------------------------------------------
# the contract


@pytest.fixture(scope="module")
def api():
    return make_snapshots.load_openapi()


def response_spec(api, method, path, status):
    op = api["paths"][path][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = make_snapshots.resolve_pointer(api, resp["$ref"])
    return resp


def response_schema(api, method, path, status, media):
    resp = response_spec(api, method, path, status)
    assert media in resp.get("content", {}), (
        f"the contract has no {media} body for {method} {path} {status}: "
        f"{sorted(resp.get('content', {}))}")
    return make_snapshots.inline(api, resp["content"][media]["schema"])


def errors_of(schema, instance):
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(v.iter_errors(instance), key=lambda e: list(e.absolute_path))]


def assert_valid(schema, instance, what):
    errs = errors_of(schema, instance)
    assert not errs, (f"{what} does not match the contract:\n  " + "\n  ".join(errs[:20]) +
                      f"\nresponse: {json.dumps(instance)[:3000]}")


def media_type(headers):
    return headers.get("content-type", "").split(";")[0].strip()


def check_response(api, method, path, status, resp, want_status=None):
    """Validates (status, headers, body) against the operation's response for
    that status: the status is documented, the media type is the documented
    one, the body matches its schema and documented headers have their
    schema. Returns the parsed body (None when there is none)."""
    st, headers, body = resp
    assert st == (want_status or status), f"{method} {path}: {st} {body[:500]!r}"
    spec = response_spec(api, method, path, st)
    for name, h in spec.get("headers", {}).items():
        if "$ref" in h:
            h = make_snapshots.resolve_pointer(api, h["$ref"])
        value = headers.get(name.lower())
        if value is None:
            assert not h.get("required"), f"{method} {path} {st}: header {name} missing"
            continue
        hs = make_snapshots.inline(api, h["schema"])
        if hs.get("type") == "integer":
            assert re.fullmatch(r"[0-9]+", value), f"{name}: {value!r}"
            value = int(value)
        assert_valid(hs, value, f"{method} {path} {st} header {name}")
    assert "x-request-id" in headers, f"{method} {path} {st}: no X-Request-Id"
    content = spec.get("content")
    if not content:
        assert body == b"", f"{method} {path} {st}: the contract has no body, got {body[:200]!r}"
        return None
    mt = media_type(headers)
    medias = {m.split(";")[0].strip(): m for m in content}
    assert mt in medias, f"{method} {path} {st}: Content-Type {mt!r}, contract: {sorted(content)}"
    schema = make_snapshots.inline(api, content[medias[mt]]["schema"])
    if mt in (JSON_CT, PROBLEM_CT):
        doc = json.loads(body)
        assert_valid(schema, doc, f"{method} {path} {st}")
        return doc
    text = body.decode()
    assert_valid(schema, text, f"{method} {path} {st}")
    return text


# --------------------------------------------------------------------------
# snapshots


@pytest.fixture(scope="module")
def snapshots():
    out = {}
    for name in make_snapshots.SNAPSHOTS:
        path = make_snapshots.snapshot_path(name)
        assert os.path.exists(path), f"{path} is missing: run make_snapshots.py"
        with open(path) as f:
            out[name] = json.load(f)
    return out


def assert_snapshot(snapshots, name, instance, what=None):
    """instance has exactly the snapshot's shape: its required keys, no
    others, and each value of the right type."""
    snap = snapshots[name]
    what = what or name
    if snap.get("additionalProperties") is False and "required" in snap:
        keys, props = set(instance), set(snap["properties"])
        missing = set(snap["required"]) - keys
        extra = keys - props
        assert not missing and not extra, (
            f"{what}: the response's keys differ from snapshots/{name}.schema.json: "
            f"missing {sorted(missing)}, not in the snapshot {sorted(extra)}")
    assert_valid(snap, instance, f"{what} (snapshot {name})")


def test_snapshots_match_the_contract(api, snapshots):
    for name in make_snapshots.SNAPSHOTS:
        want = make_snapshots.snapshot(api, name)
        assert snapshots[name] == want, (
            f"snapshots/{name}.schema.json differs from components.schemas.{name} of "
            f"proto/openapi.yaml: the contract changed without its snapshot (or the other way). "
            f"Run /usr/bin/python3 tests/integration/make_snapshots.py and review the diff.")
        with open(make_snapshots.snapshot_path(name)) as f:
            assert f.read() == make_snapshots.render(want), f"{name}: not in the generated format"


def test_snapshots_are_valid_closed_schemas(snapshots):
    for name, snap in snapshots.items():
        jsonschema.Draft202012Validator.check_schema(snap)
        assert snap["$schema"] == make_snapshots.DIALECT
        assert snap["type"] == "object" and snap["additionalProperties"] is False, name
    # Every field of a job, a summary and a stage is always present (null
    # when it has no value), so a missing key is a drift, not an option.
    for name in ("Job", "JobSummary", "Stage"):
        assert set(snapshots[name]["required"]) == set(snapshots[name]["properties"]), name
    stage = snapshots["Stage"]["properties"]
    assert set(stage) == {
        "stage", "stage_number", "task_id", "module", "engine_id", "status", "started_at",
        "completed_at", "duration_ms", "required", "retries", "attempt", "error", "skip_reason",
        "ready_at", "wait_ms", "progress", "depends_on", "timing"}
    job, summary = snapshots["Job"]["properties"], snapshots["JobSummary"]["properties"]
    assert set(job) - set(summary) == {"stages", "total_wait_ms", "queue"}
    assert set(summary) <= set(job)
    for k in summary:
        assert summary[k] == job[k], f"JobSummary.{k} differs from Job.{k}"
    assert job["stages"]["items"] == {k: v for k, v in snapshots["Stage"].items()
                                      if k not in ("$schema", "title")}


def test_the_contract_covers_every_route(api):
    """Every route the daemon registers (http_route in src/http/*.c) is in
    the contract, and the contract has nothing the daemon does not serve."""
    routed = set()
    srcdir = os.path.join(ROOT, "src", "http")
    pat = re.compile(r'(?:http_route|api_route_guarded)\(\s*\w+,\s*HTTP_M_(\w+),\s*"([^"]+)"')
    for fn in sorted(os.listdir(srcdir)):
        if fn.endswith(".c"):
            with open(os.path.join(srcdir, fn)) as f:
                for m in pat.finditer(f.read()):
                    # {name+} (the rest of the path) is {name} in OpenAPI
                    routed.add((m.group(1).lower(), re.sub(r"\{(\w+)\+\}", r"{\1}",
                                                         m.group(2))))
    assert routed, "found no http_route() calls in src/http"
    documented = {(m, p) for p, ops in api["paths"].items() for m in ops
                  if m in ("get", "put", "post", "delete", "patch", "head", "options")}
    assert routed - documented == set(), f"routes missing from proto/openapi.yaml: {sorted(routed - documented)}"
    assert documented - routed == set(), f"documented but not routed: {sorted(documented - routed)}"
    ids = [op["operationId"] for p in api["paths"].values() for op in p.values()]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------
# daemons


@pytest.fixture(scope="module")
def db(pg):
    """A database of this module's own (the daemon migrates it)."""
    pg.psql(f"DROP DATABASE IF EXISTS {DBNAME}")
    pg.psql(f"CREATE DATABASE {DBNAME}")
    return pg.url(dbname=DBNAME)


def _psql(pg, sql):
    r = subprocess.run(["psql", "-h", pg.dir, "-p", str(pg.port), "-U", "postgres", "-d", DBNAME,
                        "-v", "ON_ERROR_STOP=1", "-XAtc", sql], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def pipes_dir(tmp_path):
    d = tmp_path / "pipelines"
    d.mkdir()
    (d / "demo.yaml").write_text(PIPELINE_YAML)
    (d / "open.yaml").write_text(OPEN_PIPELINE_YAML)
    return str(d)


def start(daemon, pg, db, pipes_dir, auth=False, **config):
    cfg = {
        "database.url": db,
        "auth.enabled": auth,
        "modules.noop.command": ["/bin/true"],
        "pipelines_dir": pipes_dir,
        "scheduler.enabled": False,  # the jobs here stay queued
    }
    cfg.update(config)
    d = daemon(cfg, wait_ready=True)
    # /readyz waits for the schema; without auth, the "default" project row
    # is inserted only after that, asynchronously: wait for it too, or the
    # first submission could race it (a foreign-key 500).
    d.wait_log(lambda ln: ln["event"] == "db.migrate.done", 15.0, "db.migrate.done")
    if not auth:
        wait_for(lambda: _psql(pg, "SELECT 1 FROM projects WHERE id = 'default'").strip(),
                 10.0, 0.05, "the default project")
    return d


@pytest.fixture
def sl(daemon, pg, db, pipes_dir):
    """A daemon without auth (every request acts for project "default")."""
    return start(daemon, pg, db, pipes_dir)


def post_job(d, body, headers=None, raw=None):
    h = {"Content-Type": JSON_CT}
    h.update(headers or {})
    return d.http("POST", "/v1/jobs", body=raw if raw is not None else json.dumps(body),
                  headers=h)


def submit(d, api, body=None, headers=None):
    body = body or {"pipeline": "demo", "params": {"lang": "en"}, "input": {"text": "hi"}}
    return check_response(api, "POST", "/v1/jobs", 201, post_job(d, body, headers))


# --------------------------------------------------------------------------
# health, metrics, pipelines


def test_health_and_readiness(api, sl):
    doc = check_response(api, "GET", "/healthz", 200, sl.http("GET", "/healthz"))
    assert doc["status"] == "ok"
    doc = check_response(api, "GET", "/readyz", 200, sl.http("GET", "/readyz"))
    assert doc == {"status": "ready", "database": "ok"}


def test_readyz_503_is_a_documented_problem(api, daemon, pipes_dir, pg):
    # A database that does not exist: alive, never ready.
    d = daemon({"database.url": pg.url(dbname="apischema_missing"), "auth.enabled": False,
                "modules.noop.command": ["/bin/true"], "pipelines_dir": pipes_dir,
                "scheduler.enabled": False},
               expect_errors=[r"."])
    r = d.http("GET", "/readyz")
    doc = check_response(api, "GET", "/readyz", 503, r)
    assert doc["type"] in ("urn:stageline:problem:starting",
                           "urn:stageline:problem:db-unavailable"), doc
    # the job routes refuse too, with the documented problem and Retry-After
    for method, path, tmpl in (("GET", "/v1/jobs", "/v1/jobs"),
                               ("GET", "/v1/pipelines", "/v1/pipelines"),
                               ("GET", "/v1/jobs/0190b5a0-0000-7000-8000-000000000000",
                                "/v1/jobs/{id}")):
        r = d.http(method, path)
        doc = check_response(api, method, tmpl, 503, r)
        assert doc["type"] in ("urn:stageline:problem:starting",
                               "urn:stageline:problem:db-unavailable"), doc
        assert r[1].get("retry-after"), r[1]


def test_metrics(api, sl):
    sl.http("GET", "/healthz")
    text = check_response(api, "GET", "/metrics", 200, sl.http("GET", "/metrics"))
    assert "stageline_http_requests_total" in text
    st, h, _ = sl.http("GET", "/metrics")
    assert h["content-type"].replace(" ", "") == "text/plain;version=0.0.4;charset=utf-8"
    doc = check_response(api, "GET", "/metrics.json", 200, sl.http("GET", "/metrics.json"))
    assert any(k.startswith("http.request_latency_ms") for k in doc["histograms"]), doc


def test_pipelines(api, sl):
    doc = check_response(api, "GET", "/v1/pipelines", 200, sl.http("GET", "/v1/pipelines"))
    by_name = {p["name"]: p for p in doc["data"]}
    assert set(by_name) == {"demo", "open"}
    demo, open_ = by_name["demo"], by_name["open"]
    assert demo["additional_params"] is False and open_["additional_params"] is True
    assert open_["description"] is None and open_["params"] == {}
    assert demo["params"]["lang"] == {"type": "string", "required": True,
                                      "description": "the language"}
    assert demo["params"]["speed"] == {"type": "number", "required": False, "default": 1.0}
    assert [s["name"] for s in demo["stages"]] == ["fetch", "render", "probe"]
    fetch, render = demo["stages"][0], demo["stages"][1]
    assert (fetch["retries"], fetch["backoff_ms"], fetch["timeout_ms"]) == (2, 250, 30000)
    assert render["needs"] == ["fetch"] and render["required"] is False
    assert render["params"] == {"quality": 3}


# --------------------------------------------------------------------------
# jobs


def check_new_job(job, snapshots, pipeline="demo"):
    assert_snapshot(snapshots, "Job", job)
    for i, s in enumerate(job["stages"]):
        assert_snapshot(snapshots, "Stage", s, f"stages[{i}]")
    assert job["pipeline"] == pipeline and job["status"] == "queued"
    assert job["attempt"] == 1 and job["progress"] == 0
    assert job["created_at"] == job["queued_at"]
    assert job["started_at"] is None and job["completed_at"] is None
    assert job["duration_ms"] is None and job["error"] is None
    assert job["logs_key"] == f"default/{job['id']}/logs/pipeline.log" or \
        job["logs_key"].endswith(f"/{job['id']}/logs/pipeline.log")
    numbers = [s["stage_number"] for s in job["stages"]]
    assert numbers == sorted(numbers) and numbers == list(range(1, len(numbers) + 1))
    roots = [s for s in job["stages"] if not s["depends_on"]]
    # the enqueue event, then one job.stage.ready per root stage
    assert job["event_seq"] == 1 + len(roots)
    for s in job["stages"]:
        assert UUID_RE.match(s["task_id"])
        if s["depends_on"]:
            assert s["status"] == "pending" and s["ready_at"] is None and s["wait_ms"] is None
        else:
            assert s["status"] == "ready" and s["ready_at"] == job["created_at"]
            assert s["wait_ms"] >= 0 and s["wait_ms"] <= job["total_wait_ms"] + 1
        assert s["started_at"] is None and s["duration_ms"] is None and s["error"] is None
        assert s["engine_id"] is None and s["progress"] == 0 and s["retries"] == 0
    # root stages wait in parallel: the union counts them once
    if roots:
        assert job["total_wait_ms"] <= max(s["wait_ms"] for s in roots) + 1


def test_submit_get_304_and_list(api, snapshots, sl):
    st, h, body = post_job(sl, {"pipeline": "demo", "params": {"lang": "en"},
                                "input": {"text": "hi"}})
    job = check_response(api, "POST", "/v1/jobs", 201, (st, h, body))
    check_new_job(job, snapshots)
    assert h["location"] == f"/v1/jobs/{job['id']}"
    assert h["etag"] == '"1"'
    assert job["params"] == {"lang": "en", "speed": 1.0}, "declared defaults are filled in"
    assert [s["stage"] for s in job["stages"]] == ["fetch", "render", "probe"]
    assert job["stages"][1]["depends_on"] == ["fetch"] and job["stages"][1]["required"] is False

    st, h, body = sl.http("GET", h["location"])
    got = check_response(api, "GET", "/v1/jobs/{id}", 200, (st, h, body))
    check_new_job(got, snapshots)
    etag = h["etag"]
    assert etag == '"1"'
    # the same job, only the clock-derived waits may have grown
    volatile = ("total_wait_ms", "stages", "queue")  # queue: the GET says why it waits
    assert {k: v for k, v in got.items() if k not in volatile} == \
        {k: v for k, v in job.items() if k not in volatile}
    for a, b in zip(got["stages"], job["stages"]):
        assert {k: v for k, v in a.items() if k != "wait_ms"} == \
            {k: v for k, v in b.items() if k != "wait_ms"}
        assert (a["wait_ms"] is None) == (b["wait_ms"] is None)

    r = sl.http("GET", f"/v1/jobs/{job['id'].upper()}", headers={"If-None-Match": etag})
    check_response(api, "GET", "/v1/jobs/{id}", 304, r)
    assert r[1]["etag"] == etag
    r = sl.http("GET", f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"999", W/"1"'})
    check_response(api, "GET", "/v1/jobs/{id}", 304, r)
    r = sl.http("GET", f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"2"'})
    check_response(api, "GET", "/v1/jobs/{id}", 200, r)

    # an open pipeline takes any params, and input may be any JSON value
    other = submit(sl, api, {"pipeline": "open", "params": {"x": [1, 2]}, "input": "text"})
    check_new_job(other, snapshots, "open")
    assert other["params"] == {"x": [1, 2]}
    third = submit(sl, api, {"pipeline": "open"})
    assert third["params"] == {}

    page = check_response(api, "GET", "/v1/jobs", 200, sl.http("GET", "/v1/jobs?limit=2"))
    for item in page["data"]:
        assert_snapshot(snapshots, "JobSummary", item, "list item")
    assert [j["id"] for j in page["data"]] == [third["id"], other["id"]], "newest first"
    assert page["next_cursor"] is not None
    page2 = check_response(api, "GET", "/v1/jobs", 200,
                           sl.http("GET", f"/v1/jobs?limit=2&cursor={page['next_cursor']}"))
    ids2 = [j["id"] for j in page2["data"]]
    assert job["id"] in ids2 and third["id"] not in ids2 and other["id"] not in ids2
    summary = next(j for j in page2["data"] if j["id"] == job["id"])
    assert summary == {k: v for k, v in got.items() if k not in ("stages", "total_wait_ms", "queue")}

    filt = check_response(api, "GET", "/v1/jobs", 200,
                          sl.http("GET", f"/v1/jobs?status=queued&pipeline=demo&limit=200"
                                         f"&created_after=2000-01-01T00:00:00Z"))
    assert filt["data"] and all(j["pipeline"] == "demo" for j in filt["data"])
    empty = check_response(api, "GET", "/v1/jobs", 200,
                           sl.http("GET", "/v1/jobs?status=completed&pipeline=demo"))
    assert empty == {"data": [], "next_cursor": None}


def test_job_input_as_submitted(api, snapshots, sl):
    """GET /v1/jobs/{id}/input: what a resubmit sends again."""
    cases = [
        ({"pipeline": "demo", "params": {"lang": "en"}, "input": {"text": "hi", "n": [1, 2]}},
         {"text": "hi", "n": [1, 2]}),
        ({"pipeline": "open", "input": "just text"}, "just text"),
        ({"pipeline": "open", "input": 0}, 0),
        ({"pipeline": "open"}, None),
        ({"pipeline": "open", "input": {"ü": "snow ☃", "deep": {"a": [None, True]}}},
         {"ü": "snow ☃", "deep": {"a": [None, True]}}),
    ]
    for body, want in cases:
        job = submit(sl, api, body)
        got = check_response(api, "GET", "/v1/jobs/{id}/input", 200,
                             sl.http("GET", f"/v1/jobs/{job['id'].upper()}/input"))
        assert got == {"job_id": job["id"], "input": want, "upload": None}, (body, got)

    # a number a C double holds but jansson's integers do not, once jsonb
    # has written it out in full (src/db/pgjson.c)
    job = submit(sl, api, {"pipeline": "open", "params": {"big": 1e300, "n": 3},
                           "input": {"big": 1e300}})
    st, h, body = sl.http("GET", f"/v1/jobs/{job['id']}/input")
    got = check_response(api, "GET", "/v1/jobs/{id}/input", 200, (st, h, body))
    assert float(got["input"]["big"]) == 1e300, body[:200]
    # and the job's params, read back through jansson, keep it as the double
    # it was (src/db/pgjson.c), beside an integer that stays one
    got = check_response(api, "GET", "/v1/jobs/{id}", 200, sl.http("GET", f"/v1/jobs/{job['id']}"))
    assert got["params"] == {"big": 1e300, "n": 3} and isinstance(got["params"]["n"], int), got

    for path in ("/v1/jobs/0190b5a0-0000-7000-8000-000000000000/input", "/v1/jobs/nope/input"):
        problem(api, snapshots, "GET", "/v1/jobs/{id}/input", 404, sl.http("GET", path),
                "not-found")


def test_idempotent_replay_and_conflict(api, snapshots, sl):
    body = {"pipeline": "demo", "params": {"lang": "fr"}, "input": [1, 2, 3]}
    key = {"Idempotency-Key": "order-42/" + secrets.token_hex(4)}
    first = submit(sl, api, body, key)
    r = post_job(sl, body, key)
    again = check_response(api, "POST", "/v1/jobs", 200, r)
    assert_snapshot(snapshots, "Job", again, "replayed job")
    assert again["id"] == first["id"]
    assert r[1]["location"] == f"/v1/jobs/{first['id']}"
    # the same request in another member order is the same request
    same = json.dumps({"input": [1, 2, 3], "params": {"lang": "fr"}, "pipeline": "demo"})
    r = post_job(sl, None, key, raw=same)
    assert check_response(api, "POST", "/v1/jobs", 200, r)["id"] == first["id"]

    doc = check_response(api, "POST", "/v1/jobs", 409,
                         post_job(sl, dict(body, params={"lang": "de"}), key))
    assert_snapshot(snapshots, "Problem", doc)
    assert doc["instance"] == "/v1/jobs"


def test_replay_carries_the_etag(sl):
    body = {"pipeline": "open"}
    key = {"Idempotency-Key": secrets.token_hex(8)}
    assert post_job(sl, body, key)[0] == 201
    st, h, _ = post_job(sl, body, key)
    assert st == 200 and re.fullmatch(r'"[0-9]+"', h.get("etag", "")), h


# --------------------------------------------------------------------------
# problems


def problem(api, snapshots, method, path, status, resp, slug):
    doc = check_response(api, method, path, status, resp)
    assert resp[1]["content-type"] == PROBLEM_CT
    assert_snapshot(snapshots, "Problem", doc)
    assert doc["type"] == f"urn:stageline:problem:{slug}", doc
    assert doc["status"] == status
    return doc


def test_not_found(api, snapshots, sl):
    doc = problem(api, snapshots, "GET", "/v1/jobs/{id}", 404,
                  sl.http("GET", "/v1/jobs/0190b5a0-0000-7000-8000-000000000000"), "not-found")
    assert doc["instance"] == "/v1/jobs/0190b5a0-0000-7000-8000-000000000000"
    problem(api, snapshots, "GET", "/v1/jobs/{id}", 404, sl.http("GET", "/v1/jobs/not-a-uuid"),
            "not-found")
    # an unknown route has no operation; its problem is the same shape
    st, h, body = sl.http("GET", "/v1/nothing-here")
    assert st == 404 and h["content-type"] == PROBLEM_CT
    assert_snapshot(snapshots, "Problem", json.loads(body))
    assert json.loads(body)["type"] == "urn:stageline:problem:not-found"


def test_method_not_allowed(snapshots, sl):
    for method, path, allow in (("DELETE", "/v1/jobs", {"GET", "HEAD", "POST"}),
                                ("PUT", "/healthz", {"GET", "HEAD"}),
                                ("POST", "/v1/pipelines", {"GET", "HEAD"})):
        st, h, body = sl.http(method, path, body=b"{}" if method != "DELETE" else None)
        assert st == 405, (method, path, body)
        assert h["content-type"] == PROBLEM_CT
        assert {m.strip() for m in h["allow"].split(",")} == allow, h["allow"]
        doc = json.loads(body)
        assert_snapshot(snapshots, "Problem", doc)
        assert doc["type"] == "urn:stageline:problem:method-not-allowed"


def test_bad_requests(api, snapshots, sl):
    doc = problem(api, snapshots, "POST", "/v1/jobs", 400, post_job(sl, None, raw="{bad"),
                  "invalid-json")
    assert doc["title"] == "Invalid JSON"
    problem(api, snapshots, "POST", "/v1/jobs", 400,
            post_job(sl, {"pipeline": "open"}, {"Idempotency-Key": "has space"}),
            "bad-idempotency-key")
    problem(api, snapshots, "POST", "/v1/jobs", 400,
            post_job(sl, {"pipeline": "open"}, {"Idempotency-Key": "k" * 256}),
            "bad-idempotency-key")
    problem(api, snapshots, "GET", "/v1/jobs/{id}", 400, sl.http("GET", "/v1/jobs/%2e%2e"),
            "bad-path")


def test_unsupported_media_type(api, snapshots, sl):
    problem(api, snapshots, "POST", "/v1/jobs", 415,
            post_job(sl, {"pipeline": "open"}, {"Content-Type": "text/plain"}),
            "unsupported-media-type")
    problem(api, snapshots, "POST", "/v1/jobs", 415,
            post_job(sl, {"pipeline": "open"}, {"Content-Type": "application/x-www-form-urlencoded"}),
            "unsupported-media-type")
    # no Content-Type at all is taken as JSON; parameters are allowed
    check_response(api, "POST", "/v1/jobs", 201,
                   sl.http("POST", "/v1/jobs", body=json.dumps({"pipeline": "open"})))
    check_response(api, "POST", "/v1/jobs", 201,
                   post_job(sl, {"pipeline": "open"},
                            {"Content-Type": "application/json; charset=utf-8"}))


def fields(doc):
    return {e["field"]: e["message"] for e in doc["errors"]}


def test_validation_errors(api, snapshots, sl):
    cases = [
        ({"params": {}}, {"pipeline"}),
        ({"pipeline": 7}, {"pipeline"}),
        ({"pipeline": "no-such"}, {"pipeline"}),
        ({"pipeline": "demo", "params": []}, {"params"}),
        ({"pipeline": "demo", "resume_from": {}, "extra": 1}, {"resume_from.job_id", "resume_from.stage", "extra"}),
        ({"pipeline": "demo"}, {"params.lang"}),
        ({"pipeline": "demo", "params": {"lang": 1, "speed": "x", "nope": True}},
         {"params.lang", "params.speed", "params.nope"}),
    ]
    for body, want in cases:
        doc = problem(api, snapshots, "POST", "/v1/jobs", 422, post_job(sl, body), "validation")
        assert set(fields(doc)) == want, (body, doc)
    doc = problem(api, snapshots, "POST", "/v1/jobs", 422, post_job(sl, [1, 2]), "validation")
    assert fields(doc) == {"": "the body must be a JSON object"}

    doc = problem(api, snapshots, "GET", "/v1/jobs", 422,
                  sl.http("GET", "/v1/jobs?status=done&limit=0&cursor=zz&created_after=yesterday"),
                  "validation")
    assert set(fields(doc)) == {"status", "limit", "cursor", "created_after"}
    for q in ("limit=201", "limit=x", "cursor=c1" + "A" * 47):
        problem(api, snapshots, "GET", "/v1/jobs", 422, sl.http("GET", f"/v1/jobs?{q}"),
                "validation")


def test_too_large(api, snapshots, daemon, pg, db, pipes_dir):
    d = start(daemon, pg, db, pipes_dir, **{"limits.max_params_bytes": "1KiB",
                                        "limits.max_input_bytes": "64KiB"})
    doc = problem(api, snapshots, "POST", "/v1/jobs", 413,
                  post_job(d, {"pipeline": "open", "params": {"x": "y" * 2000}}),
                  "params-too-large")
    assert doc["title"] == "Params too large"
    # the body limit is enforced from Content-Length, before the body is read
    res = d.raw(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n")
    r, = res.responses()
    doc = problem(api, snapshots, "POST", "/v1/jobs", 413, (r.status, r.headers, r.body),
                  "body-size")
    assert "instance" not in doc and r.headers["connection"].lower() == "close"


def test_header_fields_too_large(api, snapshots, sl):
    head = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-F%d: v\r\n" % i for i in range(150)) + b"\r\n"
    r, = sl.raw(head).responses()
    problem(api, snapshots, "GET", "/v1/jobs", 431, (r.status, r.headers, r.body), "header-fields")


# --------------------------------------------------------------------------
# auth on


B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def b62(v, width=6):
    out = ""
    for _ in range(width):
        out = B62[v % 62] + out
        v //= 62
    return out


def new_key(pg, project, scopes):
    """Creates an API key row directly (what `stageline keys create` does)."""
    prefix = "".join(secrets.choice(B62) for _ in range(8))
    secret = "".join(secrets.choice(B62) for _ in range(32))
    body = f"sl_{prefix}_{secret}"
    key = body + b62(zlib.crc32(body.encode()))
    digest = hashlib.sha256(secret.encode()).hexdigest()
    arr = "{" + ",".join(scopes) + "}"
    sql = (f"INSERT INTO projects (id, name) VALUES ('{project}', '{project}') "
           f"ON CONFLICT DO NOTHING; "
           f"INSERT INTO api_keys (id, project_id, prefix, hash, scopes) VALUES "
           f"(gen_random_uuid(), '{project}', '{prefix}', decode('{digest}', 'hex'), '{arr}')")
    _psql(pg, sql)
    return key


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_auth_problems_and_project_isolation(api, snapshots, daemon, db, pipes_dir, pg):
    d = start(daemon, pg, db, pipes_dir, auth=True)
    # the schema exists once the daemon is ready: make keys now
    writer_a = new_key(pg, "schema-a", ["jobs:read", "jobs:write"])
    reader_b = new_key(pg, "schema-b", ["jobs:read"])
    reader_a = new_key(pg, "schema-a", ["jobs:read"])

    for method, path, tmpl in (("GET", "/v1/jobs", "/v1/jobs"),
                               ("GET", "/v1/pipelines", "/v1/pipelines"),
                               ("POST", "/v1/jobs", "/v1/jobs"),
                               ("GET", "/v1/jobs/0190b5a0-0000-7000-8000-000000000000",
                                "/v1/jobs/{id}")):
        for hdrs in ({}, {"Authorization": "Bearer sl_nope"}, bearer(reader_a[:-1] + ("0" if reader_a[-1] != "0" else "1"))):
            h = dict(hdrs, **({"Content-Type": JSON_CT} if method == "POST" else {}))
            r = d.http(method, path, body="{}" if method == "POST" else None, headers=h)
            doc = problem(api, snapshots, method, tmpl, 401, r, "unauthorized")
            assert r[1]["www-authenticate"] == 'Bearer realm="stageline"'
            assert doc["title"] == "Unauthorized"

    # health needs no key; on the main listener the metrics need the admin scope
    check_response(api, "GET", "/healthz", 200, d.http("GET", "/healthz"))
    problem(api, snapshots, "GET", "/metrics.json", 401, d.http("GET", "/metrics.json"),
            "unauthorized")
    doc = problem(api, snapshots, "GET", "/metrics", 403,
                  d.http("GET", "/metrics", headers=bearer(reader_a)), "forbidden")
    assert doc["missing_scopes"] == ["admin"]
    admin_a = new_key(pg, "schema-a", ["admin"])
    check_response(api, "GET", "/metrics.json", 200,
                   d.http("GET", "/metrics.json", headers=bearer(admin_a)))

    doc = problem(api, snapshots, "POST", "/v1/jobs", 403,
                  post_job(d, {"pipeline": "open"}, bearer(reader_a)), "forbidden")
    assert doc["missing_scopes"] == ["jobs:write"]

    job = check_response(api, "POST", "/v1/jobs", 201,
                         post_job(d, {"pipeline": "open"}, bearer(writer_a)))
    assert job["logs_key"] == f"schema-a/{job['id']}/logs/pipeline.log"
    path = f"/v1/jobs/{job['id']}"
    got = check_response(api, "GET", "/v1/jobs/{id}", 200, d.http("GET", path,
                                                                   headers=bearer(reader_a)))
    assert got["id"] == job["id"]
    # another project's job: 404, the same body as a job that does not exist
    st, h, body = d.http("GET", path, headers=bearer(reader_b))
    doc = problem(api, snapshots, "GET", "/v1/jobs/{id}", 404, (st, h, body), "not-found")
    r = d.http("GET", path, headers=dict(bearer(reader_b), **{"If-None-Match": '"1"'}))
    assert r[0] == 404, "a cached revision must not leak another project's job as 304"
    problem(api, snapshots, "GET", "/v1/jobs/{id}/input", 404,
            d.http("GET", path + "/input", headers=bearer(reader_b)), "not-found")
    check_response(api, "GET", "/v1/jobs/{id}/input", 200,
                   d.http("GET", path + "/input", headers=bearer(reader_a)))
    missing = d.http("GET", "/v1/jobs/0190b5a0-0000-7000-8000-000000000000",
                     headers=bearer(reader_b))
    assert {k: v for k, v in json.loads(missing[2]).items() if k != "instance"} == \
        {k: v for k, v in doc.items() if k != "instance"}
    page = check_response(api, "GET", "/v1/jobs", 200,
                          d.http("GET", "/v1/jobs", headers=bearer(reader_b)))
    assert job["id"] not in [j["id"] for j in page["data"]]
