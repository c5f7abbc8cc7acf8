"""PII scrubbing (privacy.scrub, docs/security/privacy.md) end to end: a
module (tests/integration/modules/pii.py) writes e-mail addresses, phone
numbers and the values of the job's personal-data params to stderr, in log
frames, a progress message, a warning and its error. With scrubbing on,
none of them reaches the stored stage log, the manifest's warnings, the
live `log` and `progress` events (GET /v1/jobs/{id}/events?logs=1), the
job's events and errors, or the daemon's JSON log; a persistent module's
stderr, which goes to the daemon's log, is scrubbed too. The job's params
as stored and served by GET /v1/jobs/{id} stay as submitted. With
scrubbing off (the default) everything appears, so the test can fail.

Uses the engine test helpers (test_engine.py) and the SSE reader
(test_sse.py)."""

import json
import os

import pytest

import test_engine
from slhelpers import wait_for
from test_engine import (ERR_LIFECYCLE, ERR_MODULE, PY, REPO, edb, events, get_job,  # noqa: F401
                         start, submit, wait_job)
from test_sse import Stream

EMAILS = ["zelda.quux@example.org", "ops+alerts@mail.example.co.uk"]
PHONES = ["+44 20 7946 0958", "(555) 123-4567"]
NAME = "Zelda Quuxington"  # params.customer.full_name
CUSTOMER_EMAIL = "zq.private@example.net"  # params.customer.email
SAY = EMAILS + PHONES
SECRETS = SAY + [NAME, CUSTOMER_EMAIL]

MOD = os.path.join(REPO, "tests", "integration", "modules", "pii.py")
MODULES = {"pii": {"command": [PY, MOD], "concurrency": 4},
           "piip": {"command": [PY, MOD, "--persistent"], "persistent": True,
                    "concurrency": 2}}
PIPES = {
    "pii": {"stages": [{"name": "talk", "module": "pii"}]},
    "piip": {"stages": [{"name": "talk", "module": "piip"}]},
}


@pytest.fixture(autouse=True)
def pii_modules(monkeypatch):
    """test_engine.start() knows its own modules by name; teach it ours."""
    known = test_engine.module_def
    monkeypatch.setattr(test_engine, "module_def",
                        lambda name: dict(MODULES[name]) if name in MODULES else known(name))


def params(go_file=None, fail=False):
    p = {"say": SAY, "echo_keys": ["customer.full_name", "customer.email"],
         "customer": {"full_name": NAME, "email": CUSTOMER_EMAIL}, "lang": "en"}
    if go_file:
        p["go_file"] = go_file
    if fail:
        p["fail"] = True
    return p


def run_job(d, tmp_path, pipeline="pii", fail=False):
    """Submits a job, attaches a live stream with logs before the module
    writes anything, and reads it to the end. Returns (job, live events)."""
    go = os.path.join(str(tmp_path), f"go-{len(os.listdir(str(tmp_path)))}")
    job = submit(d, pipeline, params=params(go, fail))
    s = Stream(d, job["id"], query="?logs=1", timeout=60.0)
    assert s.status == 200
    evs = []
    while not any(e["event"] == "snapshot" for e in evs):
        got = s.events(max_events=1)
        assert got, evs
        evs += got
    open(go, "w").close()  # the stream is live: let the module talk
    evs += s.events()
    s.close()
    assert evs[-1]["event"] == "end", evs[-3:]
    return wait_job(d, job["id"]), evs


def stored(d, job, name):
    path = os.path.join(d.factory.tmp_path, "var", "objects", "default", job["id"], "01_talk", name)
    with open(path, encoding="utf-8") as f:
        return f.read()


def live_text(evs):
    return "\n".join(json.dumps(e["data"], ensure_ascii=False) for e in evs
                     if e["event"] in ("log", "progress"))


def found(text, secrets=SECRETS):
    return [s for s in secrets if s in text]


def test_scrub_on_masks_stage_log_events_errors_and_daemon_log(daemon, edb, tmp_path):
    d = start(daemon, edb, PIPES, config={"privacy.scrub": True},
              expect_errors=[ERR_LIFECYCLE, ERR_MODULE])

    job, evs = run_job(d, tmp_path)
    assert job["status"] == "completed"
    # the stored stage log: every line the module wrote is there, scrubbed
    log = stored(d, job, "stage.log")
    assert found(log) == [], log
    assert log.count("stderr: contact [email] now") == 2, log
    assert log.count("stderr: contact [phone] now") == 2, log
    assert "stderr: customer.full_name is [redacted]" in log, log
    assert "stderr: customer.email is [redacted]" in log, log
    assert "log frame: reach [email]" in log and "progress: mailing [email]" in log, log
    assert "warning: bounced [phone]" in log, log
    # the engine's own lines keep their timestamps and durations
    assert "COMPLETED (" in log and "STARTING" in log, log
    # the manifest's warnings are stage-log lines; its config is the params the
    # module was given, data like input.json, kept as submitted
    manifest = json.loads(stored(d, job, "manifest.json"))
    warnings = json.dumps(manifest["warnings"], ensure_ascii=False)
    assert found(warnings) == [] and "bounced [phone]" in warnings, warnings
    assert manifest["config"]["customer"]["full_name"] == NAME
    # live events: log (stderr and frames, with fields) and progress
    live = live_text(evs)
    assert found(live) == [], live
    logs = [e["data"]["data"] for e in evs if e["event"] == "log"]
    frame = [x for x in logs if x.get("level") == "info"]
    assert frame and frame[0]["message"] == "log frame: reach [email]", logs
    assert frame[0]["fields"] == {"contact": "[phone]", "note": "or [email]"}, frame
    assert any(x["message"] == "stderr: contact [phone] now" for x in logs), logs
    # the job as the API serves it keeps its params as submitted (the owner's data)
    got = get_job(d, job["id"])
    assert got["params"]["customer"]["full_name"] == NAME
    assert got["params"]["say"] == SAY

    # a module error: its message and detail are scrubbed where they are stored
    job2, evs2 = run_job(d, tmp_path, fail=True)
    assert job2["status"] == "failed"
    err = job2["stages"][0]["error"]
    assert err["code"] == "UNREACHABLE"
    assert found(json.dumps(err, ensure_ascii=False)) == [], err
    assert "[email]" in err["message"] and "[phone]" in err["message"], err
    assert found(json.dumps(job2.get("error"), ensure_ascii=False)) == [], job2.get("error")
    rows = events(edb, job2["id"])
    assert found(json.dumps([r["data"] for r in rows], ensure_ascii=False)) == [], rows
    assert found(stored(d, job2, "stage.log")) == []
    assert found(live_text(evs2)) == []

    # a persistent module's stderr goes to the daemon's log: scrubbed there
    job3, _ = run_job(d, tmp_path, pipeline="piip")
    assert job3["status"] == "completed"
    def stderr_lines():
        got = [l for l in d.log_lines() if l["event"] == "module.stderr"
               and l.get("line", "").startswith("stderr: ")]
        return got if len(got) == len(SAY) + 2 else None

    lines = wait_for(stderr_lines, 10.0, 0.05, "the persistent module's stderr lines")
    assert any(l["line"] == "stderr: contact [email] now" for l in lines), lines
    assert any(l["line"] == "stderr: contact [phone] now" for l in lines), lines

    assert any(l["line"] == "stderr: customer.full_name is [redacted]" for l in lines), lines

    # and the daemon's whole log holds none of it
    wait_for(lambda: any(l["event"] == "job.module.error" for l in d.log_lines()), 10.0, 0.05,
             "the job.module.error line")
    text = d.log_text()
    assert found(text) == [], [l for l in text.splitlines() if found(l)]


def test_scrub_off_leaves_everything(daemon, edb, tmp_path):
    """The control: with privacy.scrub off (the default) the same module's
    words reach the stage log, the live events and the daemon's log, so the
    test above measures the scrubbing and not a module that said nothing."""
    d = start(daemon, edb, PIPES)
    job, evs = run_job(d, tmp_path)
    assert job["status"] == "completed"
    log = stored(d, job, "stage.log")
    assert found(log) == SECRETS, log
    live = live_text(evs)
    assert found(live) == SECRETS, live
    assert "[email]" not in log and "[phone]" not in live
    run_job(d, tmp_path, pipeline="piip")
    wait_for(lambda: [l for l in d.log_lines() if l["event"] == "module.stderr"
                      and EMAILS[0] in l.get("line", "")] or None,
             10.0, 0.05, "an unscrubbed module.stderr line")


def test_bad_pattern_is_a_config_error(daemon, tmp_path):
    path, _ = daemon.write_config({"privacy.scrub": True,
                                   "privacy.scrub_patterns": "email,ssn"}, name="badpii")
    r = daemon.run(["-c", path, "--check-config"])
    assert r.returncode != 0
    assert "privacy.scrub_patterns: unknown pattern 'ssn'" in r.stderr + r.stdout
