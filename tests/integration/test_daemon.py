"""stagelined as a process: health and readiness (following PostgreSQL
going away and coming back), graceful SIGTERM, flags, configuration layers
and --check-config, log redaction end to end, and the text log format."""

import json
import re
import signal
import socket
import time

import pytest

from slhelpers import (UUID_RE, Response, assert_problem, count_responses, free_port,
                       raw_exchange, wait_for)

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def the_start_line(d):
    return d.wait_log(lambda l: l["event"] == "server.start", what="server.start")


# --------------------------------------------------------------------------
# health and readiness


def test_healthz(sl):
    st, h, body = sl.http("GET", "/healthz")
    assert st == 200, body
    assert h.get("content-type", "").split(";")[0] == "application/json", h
    doc = json.loads(body)
    assert doc["status"] == "ok", doc
    assert VERSION_RE.match(doc["version"]), doc
    assert isinstance(doc["instance_id"], str) and doc["instance_id"], doc
    assert doc["instance_id"] == the_start_line(sl)["instance_id"]
    assert h.get("x-request-id") and UUID_RE.match(h["x-request-id"]), h


def test_head_healthz_has_no_body(sl):
    st, h, body = sl.http("HEAD", "/healthz")
    assert st == 200 and body == b"", (st, body)


def test_readyz_when_database_is_up(daemon):
    d = daemon(wait_ready=True)
    st, h, body = d.http("GET", "/readyz")
    assert st == 200, body
    assert h.get("content-type", "").split(";")[0] == "application/json", h
    assert json.loads(body)["status"] == "ready"


def test_readyz_follows_the_database_without_a_restart(daemon, pg):
    d = daemon(wait_ready=True)
    pid = d.proc.pid
    instance = the_start_line(d)["instance_id"]
    try:
        pg.stop("fast")

        def unready():
            st, h, body = d.http("GET", "/readyz", timeout=5.0)
            return (st, h, body) if st == 503 else None

        st, h, body = wait_for(unready, 15.0, 0.1, "/readyz == 503 after PostgreSQL stopped")

        doc = assert_problem(Response(st, "", "HTTP/1.1", list(h.items()), body), 503)
        assert doc["type"] == "urn:stageline:problem:db-unavailable", doc
        assert isinstance(doc.get("detail"), str) and doc["detail"].strip(), doc
        # liveness does not depend on the database
        assert d.http("GET", "/healthz")[0] == 200
    finally:
        if not pg.running:
            pg.start()
    d.wait_ready(timeout=15.0)
    assert d.running() and d.proc.pid == pid
    st, _, body = d.http("GET", "/healthz")
    assert json.loads(body)["instance_id"] == instance


# --------------------------------------------------------------------------
# graceful stop


def test_sigterm_is_graceful_and_idle_connections_do_not_block_it(daemon):
    d = daemon({"server.shutdown_grace": "30s", "limits.idle_timeout": "60s",
                "limits.header_timeout": "60s"})
    start = the_start_line(d)
    assert VERSION_RE.match(start["version"]), start
    assert start["listen"] == f"127.0.0.1:{d.port}", start
    assert isinstance(start["instance_id"], str) and start["instance_id"], start

    # one kept-alive connection that was served, one that never said a word
    kept = socket.create_connection((d.host, d.port), timeout=5.0)
    silent = socket.create_connection((d.host, d.port), timeout=5.0)
    try:
        first = raw_exchange(d.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", sock=kept,
                             close=False, until=lambda b: count_responses(b) >= 1)
        assert first.data.startswith(b"HTTP/1.1 200"), first
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=10.0)
        took = time.monotonic() - t0
        kept_end = raw_exchange(d.port, b"", sock=kept, close=False, read_timeout=2.0)
        silent_end = raw_exchange(d.port, b"", sock=silent, close=False, read_timeout=2.0)
    finally:
        kept.close()
        silent.close()
    assert rc == 0, d.log_text()[-2000:]
    assert took < 5.0, f"exit took {took:.1f}s with only idle connections open (grace 30s)"
    assert (kept_end.eof or kept_end.reset) and kept_end.data == b"", kept_end
    assert (silent_end.eof or silent_end.reset) and silent_end.data == b"", silent_end

    lines = d.log_lines()
    events = [l["event"] for l in lines]
    assert "server.stopping" in events and "server.stop" in events, events
    i_start, i_stopping = events.index("server.start"), events.index("server.stopping")
    i_stop = len(events) - 1 - events[::-1].index("server.stop")
    assert i_start < i_stopping < i_stop, events
    assert lines[i_stopping]["signal"] == signal.SIGTERM, lines[i_stopping]
    stop = lines[i_stop]
    assert stop["exit_code"] == 0 and stop["instance_id"] == start["instance_id"], stop
    assert refused(d.port), "still accepting connections after exit"


def test_sigint_also_stops_cleanly(daemon):
    d = daemon()
    assert d.stop(signal.SIGINT, timeout=10.0) == 0
    assert d.find_log(lambda l: l["event"] == "server.stop")


# --------------------------------------------------------------------------
# flags


def test_version(daemon):
    r = daemon.run(["--version"])
    assert r.returncode == 0, r
    assert re.fullmatch(r"stagelined \d+\.\d+\.\d+\n", r.stdout), r.stdout


def test_help(daemon):
    r = daemon.run(["--help"])
    assert r.returncode == 0, r
    assert "usage: stagelined" in r.stdout and "--check-config" in r.stdout, r.stdout


def test_unknown_flag_exits_2(daemon):
    r = daemon.run(["--no-such-flag"])
    assert r.returncode == 2, r
    assert "usage" in r.stderr, r.stderr


# --------------------------------------------------------------------------
# configuration


def test_check_config_good_file(daemon):
    path, _ = daemon.write_config()
    r = daemon.run(["--check-config", "-c", path])
    assert r.returncode == 0, r
    assert "configuration OK" in r.stdout, r.stdout


def test_check_config_lists_every_error_with_its_line(daemon):
    text = ("server:\n"
            "  listen: \"127.0.0.1:8080\"\n"
            "  nope: 1\n"                      # line 3: unknown key
            "limits:\n"
            "  header_timeout: 10 parsecs\n"   # line 5: not a duration
            "database:\n"
            "  pool: [1, 2]\n")                # line 7: a sequence where a number belongs
    path, _ = daemon.write_config(raw=text, name="bad")
    r = daemon.run(["--check-config", "-c", path])
    assert r.returncode == 1, r
    err = r.stderr
    for line, key in ((3, "nope"), (5, "limits.header_timeout"), (7, "database.pool")):
        hits = [ln for ln in err.splitlines() if f"{path}:{line}:" in ln]
        assert len(hits) == 1, f"want one error at {path}:{line}, stderr:\n{err}"
        assert key in hits[0], hits[0]
    assert "3 configuration errors" in err, err
    assert r.stdout == "", r.stdout


def test_bad_config_refuses_to_start(daemon):
    path, port = daemon.write_config({"limits.idle_timeout": "soon"}, name="bad")
    r = daemon.run(["-c", path], timeout=10)
    assert r.returncode == 1, r
    assert "limits.idle_timeout" in r.stderr, r.stderr
    assert refused(port)


def test_env_overrides_the_file(daemon):
    env_port = free_port()
    d = daemon(env={"STAGELINE_SERVER_LISTEN": f"127.0.0.1:{env_port}"}, port=env_port)
    cfg_port = int(open(d.cfg_path).read().split("listen: \"127.0.0.1:")[1].split('"')[0])
    assert cfg_port != env_port
    assert d.http("GET", "/healthz")[0] == 200
    assert refused(cfg_port)
    assert the_start_line(d)["listen"] == f"127.0.0.1:{env_port}"


def test_flag_beats_env(daemon):
    env_port, flag_port = free_port(), free_port()
    d = daemon(env={"STAGELINE_SERVER_LISTEN": f"127.0.0.1:{env_port}"},
               args=["--listen", f"127.0.0.1:{flag_port}"], port=flag_port)
    assert d.http("GET", "/healthz")[0] == 200
    assert refused(env_port)
    assert the_start_line(d)["listen"] == f"127.0.0.1:{flag_port}"


def test_env_override_of_a_limit_takes_effect(daemon):
    d = daemon(env={"STAGELINE_LIMITS_MAX_HEADER_FIELDS": "5"})
    hdrs = "".join(f"X-H{i}: v\r\n" for i in range(5))  # + Host = 6 fields
    res = d.raw(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{hdrs}\r\n".encode())
    assert res.data.startswith(b"HTTP/1.1 431"), res


def test_unknown_setting_in_a_known_section_is_an_error(daemon):
    path, port = daemon.write_config()
    r = daemon.run(["--check-config", "-c", path], env={"STAGELINE_SERVER_NOPE": "1"})
    assert r.returncode == 1, r
    assert "STAGELINE_SERVER_NOPE" in r.stderr, r.stderr
    r = daemon.run(["-c", path], env={"STAGELINE_SERVER_NOPE": "1"}, timeout=10)
    assert r.returncode == 1, r
    assert refused(port)


def test_cli_variables_are_ignored_by_the_daemon(daemon):
    path, _ = daemon.write_config()
    r = daemon.run(["--check-config", "-c", path],
                   env={"STAGELINE_URL": "http://elsewhere:1", "STAGELINE_API_KEY": "sl_x"})
    assert r.returncode == 0, r


# --------------------------------------------------------------------------
# secrets never reach the log


def test_secrets_are_redacted_end_to_end(daemon, pg):
    password = "hunter2secret"
    token = "sl_abcdefgh_SECRETSECRETSECRET123456789012345"
    signature = "deadbeefcafe"
    d = daemon({"database.url": pg.url(password=password)}, wait_ready=True)
    st, _, _ = d.http("GET", "/readyz")
    assert st == 200
    assert d.http("GET", "/healthz", headers={"Authorization": f"Bearer {token}"})[0] == 200
    st, _, _ = d.http("GET", f"/healthz?X-Amz-Signature={signature}&X-Amz-Expires=60",
                      headers={"Authorization": f"Bearer {token}"})
    assert st == 200
    assert d.http("GET", f"/nope?X-Amz-Signature={signature}")[0] == 404
    # a secret-shaped request id is echoed to its sender but masked in the log
    st, h, _ = d.http("GET", "/healthz", headers={"X-Request-Id": token})
    assert st == 200
    d.wait_log(lambda l: l["event"] == "http.access" and l["route"] == "(unmatched)")
    assert d.stop() == 0
    text = d.log_text()
    assert "http.access" in text and "db.conn.connected" in text, text[-2000:]
    for secret in (password, "SECRETSECRETSECRET", signature):
        assert secret not in text, f"{secret!r} leaked into the log:\n" + "\n".join(
            ln for ln in text.splitlines() if secret in ln)


# --------------------------------------------------------------------------
# the text log format


def test_text_log_format(daemon):
    d = daemon(args=["--log-format", "text"])
    assert d.http("GET", "/healthz")[0] == 200
    assert d.stop() == 0
    lines = [ln for ln in d.log_text().splitlines() if ln.strip()]
    assert lines, "no log output"
    for ln in lines:
        with pytest.raises(ValueError):
            json.loads(ln)
    starts = [ln for ln in lines if "server.start" in ln]
    assert starts and re.match(r"^\S+\s+info\s+server\.start:", starts[0]), lines
    assert any("server.stop" in ln for ln in lines), lines


def test_sighup_reopens_the_log_file(daemon, tmp_path):
    """With log.file set, logrotate renames the file and sends SIGHUP: the
    lines before the signal stay in the old file, the lines after go to a
    new file at the configured path."""
    path = tmp_path / "daemon-file.log"
    d = daemon({"log.file": str(path)})
    wait_for(lambda: path.exists() and "server.start" in path.read_text(), 5.0, 0.02,
             "server.start in the log file")
    rotated = tmp_path / "daemon-file.log.1"
    path.rename(rotated)
    d.http("GET", "/healthz")  # logged into the renamed file (same inode)
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: path.exists() and "log.reopen" in path.read_text(), 5.0, 0.02,
             "log.reopen in the new file")
    st, h, _ = d.http("GET", "/healthz", headers={"X-Request-Id": "after-hup"})
    assert st == 200
    wait_for(lambda: "after-hup" in path.read_text(), 5.0, 0.02, "the request in the new file")
    old = rotated.read_text()
    assert "server.start" in old and "after-hup" not in old
    for ln in path.read_text().splitlines():
        json.loads(ln)  # every line in the new file is a JSON line


def test_instance_row_heartbeats_and_leaves(daemon, pg):
    """Each daemon registers itself in `instances` once the schema is
    current, renews heartbeat_at every scheduler.heartbeat, and removes its
    row on a clean stop."""
    d = daemon({"scheduler.heartbeat": "1s"}, wait_ready=True)
    st, _, body = d.http("GET", "/healthz")
    iid = json.loads(body)["instance_id"]
    row = lambda: pg.psql(f"SELECT pid, extract(epoch from heartbeat_at) FROM instances "
                          f"WHERE id = '{iid}'").strip()
    wait_for(row, 10.0, 0.05, "the instance row")
    pid, first = row().split("|")
    assert int(pid) == d.proc.pid
    wait_for(lambda: float(row().split("|")[1]) > float(first), 5.0, 0.1,
             "a newer heartbeat")
    assert d.stop() == 0
    assert row() == ""
