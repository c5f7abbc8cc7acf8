"""The web console (docs/console.md): the daemon's static file route
(content types, caching, the security headers, no way out of the console
directory, off when server.console_dir is empty), and browser tests —
tests/integration/console/console_test.mjs drives Debian's chromium with
playwright-core against a real daemon running the speech demo with API keys,
through a TCP proxy of this file that can drop every connection: a wrong key
gets a clear message, the jobs page goes live, the timeline fills in live,
a dropped connection resumes without a duplicate or missing event, the
drill-down shows what the artifacts endpoint says (and its links download
the same bytes), retry-from-stage, resubmit with resume_from (a 422 shown
from its problem), cancel, keyset pages, a phone-width page. Screenshots go
to the test's tmp_path (printed).

CONSOLE_DIR names the built console (make check sets it; contrib/check
builds it with contrib/build-console); the tests skip without it, like the
others without STAGELINED. Chromium missing is a failure: contrib/deps
installs it.
"""
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading

import pytest
from conftest import clean_env, stageline_db, start_demo
from slhelpers import free_port

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SCRIPT = os.path.join(REPO, "tests", "integration", "console", "console_test.mjs")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")


def console_dir():
    d = os.environ.get("CONSOLE_DIR")
    if not d:
        pytest.skip("CONSOLE_DIR is not set (make check sets it to the console "
                    "contrib/build-console built)")
    if not os.path.isfile(os.path.join(d, "index.html")):
        pytest.fail(f"CONSOLE_DIR={d} has no index.html: run contrib/build-console")
    return d


def node_bin():
    tools = os.path.join(REPO, "build", "tools", "bin", "node")
    return tools if os.access(tools, os.X_OK) else shutil.which("node")


# --------------------------------------------------------------------------
# the static files


@pytest.fixture
def files(tmp_path):
    """A console directory of our own: index.html, a hashed asset, a file
    of an unknown type, a symlink out of it and a hidden file."""
    root = tmp_path / "console"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>console</title>\n")
    (root / "assets" / "main-ABCDEFGH.js").write_text("console.log(1);\n")
    (root / "assets" / "main-ABCDEFGH.css").write_text("body{}\n")
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "secret.txt").write_text("outside\n")
    os.symlink(str(tmp_path / "outside.txt"), str(root / "link.txt"))
    (tmp_path / "outside.txt").write_text("do not serve\n")
    os.symlink(str(tmp_path), str(root / "up"))
    (root / ".hidden").write_text("no\n")
    return root


def test_console_serves_its_files_with_types_caching_and_security_headers(daemon, files):
    d = daemon({"server.console_dir": str(files)})
    st, hd, body = d.http("GET", "/console/")
    assert st == 200 and body.startswith(b"<!doctype html>"), (st, body[:200])
    assert hd["content-type"] == "text/html; charset=utf-8"
    assert hd["cache-control"] == "no-cache"
    assert hd["content-security-policy"] == CSP
    assert hd["x-content-type-options"] == "nosniff"
    assert hd["referrer-policy"] == "no-referrer"
    assert hd["etag"].startswith('"') and hd["last-modified"].endswith(" GMT"), hd
    # revalidation
    st, hd2, body = d.http("GET", "/console/", headers={"If-None-Match": hd["etag"]})
    assert st == 304 and body == b"", (st, body)
    st, _, _ = d.http("GET", "/console/", headers={"If-None-Match": '"other"'})
    assert st == 200
    # HEAD: the headers and the length, no body
    st, hd3, body = d.http("HEAD", "/console/")
    assert st == 200 and body == b"" and hd3["content-length"] == str(len(
        (files / "index.html").read_bytes())), hd3
    # /console without the slash
    st, hd, _ = d.http("GET", "/console")
    assert st == 301 and hd["location"] == "/console/", (st, hd)
    # hashed assets are immutable; types by extension
    for name, ctype in (("assets/main-ABCDEFGH.js", "text/javascript; charset=utf-8"),
                        ("assets/main-ABCDEFGH.css", "text/css; charset=utf-8")):
        st, hd, body = d.http("GET", f"/console/{name}")
        assert st == 200 and body == (files / name).read_bytes(), (name, st)
        assert hd["content-type"] == ctype, hd
        assert hd["cache-control"] == "public, max-age=31536000, immutable", hd
        assert hd["content-security-policy"] == CSP
    st, hd, body = d.http("GET", "/console/blob.bin")
    assert st == 200 and hd["content-type"] == "application/octet-stream" and body == b"\x00\x01"
    assert hd["cache-control"] == "no-cache"
    # no SPA fallback: unknown paths are 404 problems
    for path in ("/console/nope", "/console/assets/nope.js", "/console/jobs/123"):
        st, hd, body = d.http("GET", path)
        assert st == 404 and hd["content-type"] == "application/problem+json", (path, st)
        assert json.loads(body)["type"] == "urn:stageline:problem:not-found"


def test_console_files_never_lead_outside_its_directory(daemon, files):
    d = daemon({"server.console_dir": str(files)})
    # symlinks (to a file or a directory), hidden names, directories: 404
    for path in ("/console/link.txt", "/console/up/outside.txt", "/console/.hidden",
                 "/console/assets", "/console/assets/"):
        st, _, body = d.http("GET", path)
        assert st == 404, (path, st, body[:200])
        assert b"do not serve" not in body
    # dot segments and encoded slashes never reach the handler
    for path in ("/console/../console/secret.txt", "/console/%2e%2e/x", "/console/a%2fb",
                 "/console/assets/%2e%2e/index.html"):
        st, _, body = d.http("GET", path)
        assert st in (400, 404), (path, st)
        assert b"outside" not in body


def test_console_is_off_without_a_directory(daemon):
    d = daemon()
    for path in ("/console", "/console/", "/console/index.html"):
        st, hd, body = d.http("GET", path)
        assert st == 404, (path, st)
        assert "server.console_dir" in json.loads(body)["detail"]


# --------------------------------------------------------------------------
# the browser tests


class DropProxy:
    """A TCP forwarder on 127.0.0.1 in front of the daemon. cut() closes
    every connection open through it (a network drop, as the browser sees
    it); requests keeps the request heads that went through (method, path,
    Last-Event-ID)."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.requests = []
        self.cuts = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src, dst, upstream):
        head = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    head = self._note(head + data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _note(self, buf):
        """Records every complete request head in buf; returns the rest."""
        while b"\r\n\r\n" in buf:
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                return b""  # a body, not a head: stop parsing this connection
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            with self.lock:
                self.requests.append({"method": parts[0], "path": parts[1], "headers": hdrs})
            n = int(hdrs.get("content-length", "0") or 0)
            if n:
                if len(buf) < n:
                    return b""  # bodies here are small and sent at once; give up on this one
                buf = buf[n:]
        return buf[-65536:]

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
            self.cuts += 1
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.closed = True
        self.lsock.close()
        self.cut()


def control_server(proxy):
    """GET /cut on this little server drops the proxy's connections."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/cut":
                proxy.cut()
                self.send_response(204)
            else:
                self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _speech_tools_missing():
    miss = [t for t in ("espeak-ng", "sox", "pocketsphinx_continuous") if shutil.which(t) is None]
    if not os.path.exists("/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict"):
        miss.append("pocketsphinx-en-us")
    return miss


@pytest.fixture
def cdb(pg):
    name = "console_browser"
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name}")
    return pg.url(dbname=name)


@pytest.mark.skipif(bool(_speech_tools_missing()), reason="speech tools not installed")
def test_console_in_a_browser_against_the_speech_demo(daemon, cdb, tmp_path):
    cdir = console_dir()
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (contrib/deps installs it: "
                    "apt-get install --no-install-recommends chromium)")
    node = node_bin()
    if node is None or not os.path.isdir(os.path.join(REPO, "node_modules", "playwright-core")):
        pytest.fail("node or playwright-core is missing: run contrib/npm-tools")

    port = free_port()
    d = start_demo(daemon, "console", port, {
        "STAGELINE_SERVER_LISTEN": f"127.0.0.1:{port}",
        "STAGELINE_DATABASE_URL": cdb,
        "STAGELINE_STORE_PATH": str(tmp_path / "objects"),
        "STAGELINE_STORE_URL_SECRET": hashlib.sha256(b"console test").hexdigest(),
        "STAGELINE_SCHEDULER_SCRATCH_DIR": str(tmp_path / "scratch"),
        "STAGELINE_SERVER_CONSOLE_DIR": cdir,
        "STAGELINE_AUTH_ENABLED": "true",
        "STAGELINE_SERVER_SHUTDOWN_GRACE": "5s",
    })
    stageline_db(cdb, "projects", "create", "web", "--name", "Web")
    key = stageline_db(cdb, "keys", "create", "--project", "web", "--scopes", "jobs:read,jobs:write")
    # a well-formed key that does not exist
    bad = key[:-10] + ("A" if key[-10] != "A" else "B") + key[-9:]

    proxy = DropProxy(port)
    ctl = control_server(proxy)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        conf = {
            "base": f"http://127.0.0.1:{proxy.port}",
            "control": f"http://127.0.0.1:{ctl.server_address[1]}",
            "key": key,
            "bad_key": bad,
            "shots": str(shots),
            "chromium": chromium,
            "pipeline": "speech-demo",
            "input": {"text": "The console draws every stage of this job as it runs. "
                              "Then it shows what each stage wrote."},
        }
        r = subprocess.run([node, SCRIPT, json.dumps(conf)], capture_output=True, text=True,
                           timeout=420, cwd=REPO, env=clean_env())
        print(r.stdout)
        print(r.stderr[-5000:])
        print(f"screenshots: {shots}")
        assert r.returncode == 0, f"the browser test failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    finally:
        ctl.shutdown()
        proxy.close()

    # the drop happened, and the stream came back with Last-Event-ID, never
    # with the key in a URL
    assert proxy.cuts >= 1
    streams = [q for q in proxy.requests if q["path"].split("?")[0].endswith("/events")
               and q["path"].startswith("/v1/jobs/")]
    assert any("last-event-id" in q["headers"] for q in streams), streams
    assert all(key not in q["path"] for q in proxy.requests)
    assert all(q["headers"].get("authorization") in (f"Bearer {key}", f"Bearer {bad}")
               for q in proxy.requests if q["path"].startswith("/v1/")
               and not q["path"].startswith("/v1/objects/"))
    for name in ("wrong-key", "job-running", "job-completed", "stage-drilldown", "job-retried",
                 "job-phone"):
        assert (shots / f"{name}.png").stat().st_size > 1000, name
    # the key never reached the daemon's log
    assert key.split("_")[2][:16] not in d.log_text()
