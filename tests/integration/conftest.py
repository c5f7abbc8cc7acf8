"""Fixtures for the integration suite: a private PostgreSQL 15 cluster for
the session, and a factory that runs the real stagelined against it.

Every daemon's stderr (and stdout) goes to a file under the test's tmp_path.
When the test ends the daemon gets SIGTERM (it must exit 0 within 10 s) and
the file is scanned: a sanitizer report, a line that is not JSON (unless the
test chose --log-format text) or a level "error" line the test did not
declare with expect_errors=[regex, ...] fails the test."""

import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from slhelpers import free_port, http_request, raw_exchange, wait_for

PG_BIN = "/usr/lib/postgresql/15/bin"

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "WARNING: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "LeakSanitizer",
    "runtime error:",
    "SUMMARY: AddressSanitizer",
    "SUMMARY: UndefinedBehaviorSanitizer",
)

# Text log lines: "<ts> <level> <event>: <msg> k=v ..."
TEXT_LEVEL_RE = re.compile(r"^\S+\s+(debug|info|warn|error)\s+\S+:")


# --------------------------------------------------------------------------
# PostgreSQL


class PgCluster:
    """A throwaway PostgreSQL 15 cluster on a unix socket in its own
    directory. The port only names the socket file."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sl-pg-", dir="/tmp")
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "log")
        self.port = free_port()
        self.dbname = "stageline"
        self.running = False

    def _as_postgres(self, *argv, timeout=60):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, timeout=timeout)

    def _check(self, r, what):
        if r.returncode != 0:
            tail = ""
            if os.path.exists(self.logfile):
                with open(self.logfile, errors="replace") as f:
                    tail = f.read()[-3000:]
            raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{tail}")

    def init(self):
        r = self._as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                              "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        self._check(r, "initdb")
        self.start()
        r = self._as_postgres(f"{PG_BIN}/createdb", "-h", self.dir, "-p", str(self.port), "-U",
                              "postgres", self.dbname)
        self._check(r, "createdb")

    def start(self):
        opts = f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off"
        r = self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t",
                              "30", "-o", opts, "start")
        self._check(r, "pg_ctl start")
        self.running = True

    def stop(self, mode="fast"):
        r = self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30",
                              "stop")
        self._check(r, "pg_ctl stop")
        self.running = False

    def url(self, password=None, dbname=None):
        user = "postgres" + (f":{password}" if password else "")
        return f"postgresql://{user}@/{dbname or self.dbname}?host={self.dir}&port={self.port}"

    @property
    def conninfo(self):
        return f"host={self.dir} port={self.port} user=postgres dbname={self.dbname}"

    def psql(self, sql):
        r = subprocess.run(["psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d",
                            self.dbname, "-XAtc", sql], capture_output=True, text=True, timeout=30)
        self._check(r, f"psql {sql!r}")
        return r.stdout

    def destroy(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    if os.geteuid() != 0:
        pytest.skip("the integration suite runs a private PostgreSQL via runuser: needs root")
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' user to run the cluster as")
    cluster = PgCluster()
    try:
        cluster.init()
    except Exception:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()


# --------------------------------------------------------------------------
# stagelined


def stagelined_path():
    path = os.environ.get("STAGELINED")
    if not path:
        pytest.skip("STAGELINED is not set (make check sets it to the built daemon)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"STAGELINED={path} is not an executable file")
    return path


def clean_env(extra=None):
    """The environment for the daemon: ours minus every STAGELINE_* (so the
    caller's shell can't change a test), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGELINE_")}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env.update(extra or {})
    return env


def _yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(tree, indent=0):
    out = []
    for k, v in tree.items():
        pad = "  " * indent
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out.append(to_yaml(v, indent + 1))
        else:
            out.append(f"{pad}{k}: {_yaml_scalar(v)}")
    return "\n".join(x for x in out if x)


def apply_overrides(tree, overrides):
    """overrides: {"limits.header_timeout": "1s", ...}; a None value removes the key."""
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return tree


class Daemon:
    def __init__(self, factory, name, cfg_path, argv, env, port, expect_errors, text_log):
        self.factory = factory
        self.name = name
        self.cfg_path = cfg_path
        self.argv = argv
        self.env = env
        self.port = port
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{port}"
        self.expect_errors = [re.compile(r) for r in expect_errors]
        self.text_log = text_log
        self.log_path = os.path.join(factory.tmp_path, f"{name}.log")
        self.proc = None
        self.exit_code = None
        self.stopped_by_test = False

    # -- lifecycle

    def start(self, wait_healthy=True, wait_ready=False):
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.factory.tmp_path)
        finally:
            logf.close()
        if wait_healthy:
            self.wait_healthy()
        if wait_ready:
            self.wait_ready()
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _died(self):
        return AssertionError(f"stagelined exited early with {self.proc.returncode}; log:\n"
                              f"{self.log_text()[-4000:]}")

    def wait_healthy(self, timeout=10.0):
        def up():
            if self.proc.poll() is not None:
                raise self._died()
            try:
                st, _, _ = self.http("GET", "/healthz", timeout=1.0)
                return st == 200
            except OSError:
                return False

        try:
            wait_for(up, timeout, 0.02, f"GET /healthz on port {self.port}")
        except AssertionError as e:
            if self.proc.poll() is not None:
                raise self._died() from None
            raise AssertionError(f"{e}; log:\n{self.log_text()[-4000:]}") from None

    def wait_ready(self, timeout=15.0):
        def ready():
            if self.proc.poll() is not None:
                raise self._died()
            try:
                st, _, _ = self.http("GET", "/readyz", timeout=3.0)
                return st == 200
            except OSError:
                return False

        wait_for(ready, timeout, 0.05, "GET /readyz == 200")

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Sends sig and waits for the exit; returns the exit code (negative:
        killed by that signal). Fails if it doesn't exit within timeout."""
        self.stopped_by_test = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = self.proc.returncode
                raise AssertionError(f"stagelined did not exit within {timeout}s of {sig!r}")
        self.exit_code = self.proc.returncode
        return self.exit_code

    # -- HTTP

    def http(self, method, path, body=None, headers=None, timeout=5.0):
        return http_request(self.port, method, path, body=body, headers=headers, host=self.host,
                            timeout=timeout)

    def raw(self, parts, read_timeout=5.0, **kw):
        return raw_exchange(self.port, parts, read_timeout=read_timeout, host=self.host, **kw)

    # -- log

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self):
        """Every line that parses as a JSON object, in order."""
        out = []
        for ln in self.log_text().splitlines():
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def find_log(self, pred):
        return [ln for ln in self.log_lines() if pred(ln)]

    def wait_log(self, pred, timeout=5.0, what="a log line"):
        """The first JSON log line for which pred(line) is true, waiting up to
        timeout seconds for it to appear."""
        def found():
            for ln in self.log_lines():
                try:
                    if pred(ln):
                        return ln
                except (KeyError, TypeError):
                    pass
            return None

        try:
            return wait_for(found, timeout, 0.02, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; log:\n{self.log_text()[-4000:]}") from None

    # -- the post-mortem every test gets

    def problems(self):
        text = self.log_text()
        problems = []
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"sanitizer report ({marker!r}) in the daemon log")
                break
        for n, ln in enumerate(text.splitlines(), 1):
            if not ln.strip():
                continue
            try:
                obj = json.loads(ln)
            except ValueError:
                obj = None
            if obj is None or not isinstance(obj, dict):
                if self.text_log:
                    m = TEXT_LEVEL_RE.match(ln)
                    if m and m.group(1) == "error" and not any(r.search(ln) for r in self.expect_errors):
                        problems.append(f"line {n}: unexpected error: {ln}")
                    continue
                problems.append(f"line {n}: not a JSON log line: {ln[:300]}")
                continue
            for key in ("ts", "level", "event", "msg"):
                if key not in obj:
                    problems.append(f"line {n}: JSON log line without {key!r}: {ln[:300]}")
            if obj.get("level") == "error" and not any(r.search(ln) for r in self.expect_errors):
                problems.append(f"line {n}: unexpected level=error line: {ln[:500]}")
        return problems


def stageline_db(url, *args):
    """`stageline --database-url url args...` (a bootstrap command: projects,
    keys); its stdout, stripped. It must succeed."""
    path = os.environ.get("STAGELINE_CLI")
    if not path:
        pytest.skip("STAGELINE_CLI is not set (make check sets it to the built `stageline`)")
    r = subprocess.run([path, "--database-url", url, *args], capture_output=True, text=True,
                       env=clean_env(), timeout=30)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.strip()


def start_demo(daemon, name, port, env, edb=None):
    """stagelined on contrib/demo.yaml as the quickstart runs it, its settings
    in env (STAGELINE_* variables): started and ready, and with edb, its
    default project row there."""
    cfg = os.path.join(REPO_ROOT, "contrib", "demo.yaml")
    argv = [daemon.binary, "-c", cfg, "--log-format", "json"]
    d = Daemon(daemon, name, cfg, argv, clean_env(env), port, (), False)
    daemon.daemons.append(d)
    d.start(wait_healthy=True)
    d.wait_ready(timeout=20.0)
    if edb is not None:
        wait_for(lambda: edb.all("SELECT 1 FROM projects WHERE id = 'default'"), 10.0, 0.02,
                 "the default project row")
    return d


class DaemonFactory:
    def __init__(self, tmp_path, pg):
        self.tmp_path = str(tmp_path)
        self.pg = pg
        self.daemons = []
        self.binary = stagelined_path()

    def base_config(self, port):
        return {
            "server": {"listen": f"127.0.0.1:{port}", "shutdown_grace": "10s"},
            "database": {"url": self.pg.url()},
            "log": {"format": "json", "level": "info"},
            "limits": {
                "max_input_bytes": "1MiB",
                "max_header_bytes": "32KiB",
                "max_header_fields": 100,
                "header_timeout": "5s",
                "idle_timeout": "5s",
            },
        }

    def write_config(self, config=None, name="stageline", port=None, raw=None):
        """Writes <tmp>/<name>.yaml: the base config with `config` overrides
        ({"dotted.key": value}), or the literal text `raw`. Returns (path, port)."""
        port = port or free_port()
        path = os.path.join(self.tmp_path, f"{name}.yaml")
        if raw is None:
            tree = apply_overrides(self.base_config(port), config)
            raw = "# written by tests/integration/conftest.py\n" + to_yaml(tree) + "\n"
        with open(path, "w") as f:
            f.write(raw)
        return path, port

    def run(self, args, env=None, timeout=30):
        """Runs the binary to completion (--version, --check-config ...)."""
        return subprocess.run([self.binary, *args], capture_output=True, text=True,
                              env=clean_env(env), timeout=timeout, cwd=self.tmp_path)

    def __call__(self, config=None, args=(), env=None, port=None, expect_errors=(),
                 wait_healthy=True, wait_ready=False, name=None):
        """Starts a daemon with the base config plus `config` overrides.
        `port` is where it will listen when args/env move it off the config's
        port. Logs are JSON unless args choose --log-format."""
        name = name or f"stagelined-{len(self.daemons)}"
        cfg_path, cfg_port = self.write_config(config, name=name)
        args = list(args)
        text_log = False
        if "--log-format" in args:
            text_log = args[args.index("--log-format") + 1] == "text"
        else:
            args = ["--log-format", "json", *args]
        argv = [self.binary, "-c", cfg_path, *args]
        d = Daemon(self, name, cfg_path, argv, clean_env(env), port or cfg_port, expect_errors,
                   text_log)
        self.daemons.append(d)
        return d.start(wait_healthy=wait_healthy, wait_ready=wait_ready)

    def finish(self):
        problems = []
        for d in self.daemons:
            if d.proc is None:
                continue
            if d.proc.poll() is None:
                try:
                    rc = d.stop(signal.SIGTERM, timeout=10.0)
                    if rc != 0:
                        problems.append(f"{d.name}: exit code {rc} after SIGTERM, want 0")
                except AssertionError as e:
                    problems.append(f"{d.name}: {e}")
            elif not d.stopped_by_test:
                problems.append(f"{d.name}: exited by itself with {d.proc.returncode}")
            problems += [f"{d.name}: {p}" for p in d.problems()]
        if problems:
            logs = "\n".join(f"--- {d.name} ({d.log_path})\n{d.log_text()[-3000:]}" for d in self.daemons)
            pytest.fail("daemon post-mortem:\n  " + "\n  ".join(problems) + "\n" + logs,
                        pytrace=False)


@pytest.fixture
def daemon(tmp_path, pg):
    """Factory: daemon(config={...}, args=[...], env={...}, expect_errors=[...])
    starts a stagelined and waits for /healthz; see DaemonFactory.__call__."""
    f = DaemonFactory(tmp_path, pg)
    yield f
    f.finish()


@pytest.fixture
def sl(daemon):
    """A running daemon with the base config."""
    return daemon()


# --------------------------------------------------------------------------
# a local S3 that checks SigV4 signatures (tests/integration/s3rver.mjs:
# @20minutes/s3rver 5.0.0 + patches/, installed by contrib/npm-tools)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
S3RVER_SCRIPT = os.path.join(REPO_ROOT, "tests", "integration", "s3rver.mjs")


def sigv4sign_path():
    """tests/harness/sigv4sign (make check-integration sets SIGV4SIGN)."""
    path = os.environ.get("SIGV4SIGN")
    if not path:
        pytest.skip("SIGV4SIGN is not set (make check-integration sets it to the built harness)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"SIGV4SIGN={path} is not an executable file")
    return path


def node_env():
    """(node, env): the Node contrib/npm-tools chose — build/tools/bin first
    in PATH when it installed one. Fails (no skip) when the npm tools or the
    s3rver patches are missing."""
    env = dict(os.environ)
    # s3rver 5.0.0 makes its ListObjectsV2 continuation tokens with DES, which
    # Node's OpenSSL 3 has only in the legacy provider (else every truncated
    # page is a 500)
    opts = env.get("NODE_OPTIONS", "")
    if "--openssl-legacy-provider" not in opts:
        env["NODE_OPTIONS"] = (opts + " --openssl-legacy-provider").strip()
    tools_bin = os.path.join(REPO_ROOT, "build", "tools", "bin")
    if os.path.isdir(tools_bin):
        env["PATH"] = tools_bin + os.pathsep + env.get("PATH", "")
    node = shutil.which("node", path=env["PATH"])
    auth_js = os.path.join(REPO_ROOT, "node_modules", "@20minutes", "s3rver", "lib", "middleware",
                           "authentication.js")
    if not node or not os.path.exists(auth_js):
        pytest.fail(f"node or {REPO_ROOT}/node_modules/@20minutes/s3rver is missing: "
                    "run contrib/npm-tools", pytrace=False)
    with open(auth_js) as f:
        if "map(encodeURIComponentRFC3986).join('=')" not in f.read():
            pytest.fail("node_modules/@20minutes/s3rver is not patched (patches/): "
                        "run contrib/npm-tools", pytrace=False)
    return node, env


class S3Server:
    """s3rver.mjs on 127.0.0.1:<port>, objects under directory. stop() and
    start() restart it on the same port and directory (outage tests)."""

    region = "us-east-1"

    def __init__(self, directory, log_path, bucket="stageline-test",
                 access_key="AKIDSTAGELINETEST", secret="stageline-test-secret", port=None):
        self.directory = str(directory)
        self.log_path = str(log_path)
        self.bucket = bucket
        self.access_key = access_key
        self.secret = secret
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.endpoint = f"http://{self.host}:{self.port}"
        self.proc = None

    def object_path(self, key):
        """Where s3rver keeps the bytes of bucket/key."""
        return os.path.join(self.directory, self.bucket, key + "._S3rver_object")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=15.0):
        assert not self.running(), "s3rver is already running"
        node, env = node_env()
        argv = [node, S3RVER_SCRIPT, "--port", str(self.port), "--directory", self.directory,
                "--bucket", self.bucket, "--access-key", self.access_key, "--secret", self.secret,
                "--exit-on-stdin-eof"]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.stop()
                raise AssertionError(f"s3rver did not print 'ready' within {timeout}s; "
                                     f"log:\n{self._log_tail()}")
            ch = os.read(self.proc.stdout.fileno(), 1)
            if not ch:
                self.proc.wait()
                raise AssertionError(f"s3rver exited with {self.proc.returncode} before ready; "
                                     f"log:\n{self._log_tail()}")
            line += ch
        if line.split() != [b"ready", str(self.port).encode()]:
            self.stop()
            raise AssertionError(f"s3rver said {line!r}, want 'ready {self.port}'")
        return self

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc = None

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def s3server(tmp_path):
    """A fresh signature-checking S3 for one test: bucket "stageline-test",
    key AKIDSTAGELINETEST / secret stageline-test-secret, region us-east-1;
    .endpoint, .bucket, .access_key, .secret, .directory, .stop(), .start()."""
    srv = S3Server(tmp_path / "s3", tmp_path / "s3rver.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def s3server_session(tmp_path_factory):
    """The same, shared by the whole session (don't stop it in a test)."""
    d = tmp_path_factory.mktemp("s3server")
    srv = S3Server(d / "s3", d / "s3rver.log")
    srv.start()
    yield srv
    srv.stop()
