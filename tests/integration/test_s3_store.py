"""The s3 store backend (src/store/s3_store.c over src/httpc) against a local,
signature-checking S3 (tests/integration/s3rver.mjs, @20minutes/s3rver with
the TOOLCHAIN §7 fixes), driven through tests/harness/storecli: one store
operation per run, its result as one JSON line.

Covers byte-exact round trips (empty, small, 20 MiB), head, ranged reads,
ListObjectsV2 paging past 1000 keys with a prefix, delete and NOT_FOUND, a
wrong secret (403 SignatureDoesNotMatch), presigned URLs (and tampered ones),
awkward keys, the key prefix, and retries across an S3 outage: one shorter
than the retry window succeeds, one longer fails with a clear IO error."""
import base64
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import S3Server


def storecli_path():
    path = os.environ.get("STORECLI")
    if not path:
        pytest.skip("STORECLI is not set (make check-integration sets it to the built harness)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"STORECLI={path} is not an executable file")
    return path


@pytest.fixture
def s3(s3server):
    return s3server


class Cli:
    def __init__(self, srv, **kw):
        self.srv = srv
        self.kw = kw

    def argv(self, *args, **over):
        o = dict(endpoint=self.srv.endpoint, bucket=self.srv.bucket,
                 access_key=self.srv.access_key, secret=self.srv.secret, region="us-east-1")
        o.update(self.kw)
        o.update(over)
        argv = [storecli_path()]
        for k, v in o.items():
            if v is True:
                argv.append("--" + k.replace("_", "-"))
            elif v is not None and v is not False:
                argv += ["--" + k.replace("_", "-"), str(v)]
        return argv + [str(a) for a in args]

    def run(self, *args, timeout=60, **over):
        p = subprocess.run(self.argv(*args, **over), capture_output=True, timeout=timeout)
        lines = [l for l in p.stdout.decode().splitlines() if l.strip()]
        assert lines, f"storecli printed nothing; rc={p.returncode} stderr={p.stderr[-2000:]!r}"
        res = [json.loads(l) for l in lines]
        for r in res:
            assert (p.returncode == 0) == all(x["ok"] for x in res), (p.returncode, res)
        assert b"AddressSanitizer" not in p.stderr and b"runtime error" not in p.stderr, \
            p.stderr.decode(errors="replace")[-4000:]
        return res[-1] if len(res) == 1 else res

    def ok(self, *args, **over):
        r = self.run(*args, **over)
        assert r["ok"], r
        return r


@pytest.fixture
def cli(s3):
    return Cli(s3)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("size", [0, 1000, 20 * 1024 * 1024 + 17])
def test_put_get_round_trip(cli, s3, tmp_path, size):
    data = os.urandom(size)
    src = write(tmp_path / "src.bin", data)
    key = f"jobs/1/round-{size}.bin"
    cli.ok("put", key, src)
    # s3rver keeps the bytes as a plain file: what it received, byte for byte
    assert read(s3.object_path(key)) == data
    head = cli.ok("head", key)
    assert head["size"] == size
    assert head["mtime_ms"] > 0
    dst = tmp_path / "out" / "dst.bin"
    dst.parent.mkdir()
    write(dst, b"old content")
    cli.ok("get", key, dst)
    assert read(dst) == data
    assert os.listdir(dst.parent) == ["dst.bin"]  # no temporary left behind
    if size <= 1000:
        r = cli.ok("getbuf", key, 1000)
        assert base64.b64decode(r["data_b64"]) == data
        assert r["size"] == size
    else:
        r = cli.run("getbuf", key, 1024 * 1024)
        assert not r["ok"] and r["error"]["kind"] == "too_large", r


def test_get_range(cli, tmp_path):
    data = bytes(i % 251 for i in range(100000))
    cli.ok("put", "logs/pipeline.log", write(tmp_path / "l", data))
    r = cli.ok("getrange", "logs/pipeline.log", 0, 10)
    assert base64.b64decode(r["data_b64"]) == data[:10] and r["size"] == len(data)
    r = cli.ok("getrange", "logs/pipeline.log", 54321, 20000)
    assert base64.b64decode(r["data_b64"]) == data[54321:74321]
    r = cli.ok("getrange", "logs/pipeline.log", 99990, 100)  # the tail: fewer bytes
    assert base64.b64decode(r["data_b64"]) == data[99990:] and r["size"] == len(data)
    for off in (100000, 250000):  # at or past the end: empty, with the size
        r = cli.ok("getrange", "logs/pipeline.log", off, 10)
        assert r["len"] == 0 and r["size"] == len(data), r
    r = cli.ok("getrange", "logs/pipeline.log", 5, 0)
    assert r["len"] == 0 and r["size"] == len(data)
    r = cli.run("getrange", "logs/missing.log", 0, 10)
    assert r["error"]["kind"] == "not_found"
    cli.ok("putbuf", "logs/empty.log", "")
    r = cli.ok("getrange", "logs/empty.log", 0, 10)
    assert r["len"] == 0 and r["size"] == 0


def test_list_pages_and_prefix(cli, tmp_path):
    src = write(tmp_path / "one", b"x" * 3)
    t0 = time.monotonic()
    res = cli.run("putmany", "proj/job/k", src, 1105, parallel=4)
    assert all(r["ok"] for r in res) and len(res) == 1105
    cli.ok("putbuf", "proj/other", "y")
    cli.ok("putbuf", "proj/jobless", "z")
    r = cli.ok("list", "proj/job/")
    keys = [e["key"] for e in r["entries"]]
    assert r["n"] == 1105  # more than one ListObjectsV2 page (1000)
    assert keys == sorted(f"proj/job/k{i}" for i in range(1105))
    assert all(e["size"] == 3 and e["mtime_ms"] > 0 for e in r["entries"])
    r = cli.ok("list", "proj/job/k11")
    assert r["n"] == 1 + 10 + 5  # k11, k110..k119, k1100..k1104
    r = cli.ok("list", "proj/job")  # a string prefix: "jobless" too
    assert r["n"] == 1106
    assert cli.ok("list", "nothing/")["n"] == 0
    assert time.monotonic() - t0 < 30


def test_delete_and_not_found(cli, tmp_path):
    cli.ok("putbuf", "a/b.json", '{"x":1}')
    cli.ok("del", "a/b.json")
    for op in (("head", "a/b.json"), ("getbuf", "a/b.json", 100),
               ("getrange", "a/b.json", 0, 1)):
        r = cli.run(*op)
        assert r["error"]["kind"] == "not_found", r
    dst = tmp_path / "d"
    dst.mkdir()
    r = cli.run("get", "a/b.json", dst / "f")
    assert r["error"]["kind"] == "not_found"
    assert os.listdir(dst) == []  # neither the file nor a temporary
    # S3 cannot tell an absent key on delete: success
    cli.ok("del", "a/never-there")
    r = cli.run("head", "../escape")
    assert r["error"]["kind"] == "invalid_key"


def test_wrong_secret_names_the_s3_error(cli, tmp_path):
    cli.ok("putbuf", "k", "v")
    for op in (("getbuf", "k", 10), ("putbuf", "k2", "v"), ("list", "")):
        r = cli.run(*op, secret="not-the-secret")
        assert r["error"]["kind"] == "denied", r
        msg = r["error"]["message"]
        assert "403 SignatureDoesNotMatch" in msg, msg
        assert "not-the-secret" not in msg and "Signature=" not in msg
        assert "after" not in msg  # a 403 is not retried
    r = cli.run("getbuf", "k", 10, access_key="AKIDUNKNOWN")
    assert "403 InvalidAccessKeyId" in r["error"]["message"]
    assert r["error"]["kind"] == "denied", r


def test_presigned_url(cli, tmp_path):
    data = os.urandom(5000)
    cli.ok("put", "dl/file name.bin", write(tmp_path / "f", data))
    url = cli.ok("presign", "dl/file name.bin", 60)["url"]
    assert url.startswith(cli.srv.endpoint + "/" + cli.srv.bucket + "/dl/file%20name.bin?")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == data
    sig = url.rsplit("X-Amz-Signature=", 1)[1]
    bad = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for tampered in (url.replace(sig, bad), url.replace("file%20name", "file%20nam"),
                     url.replace("X-Amz-Expires=60", "X-Amz-Expires=900")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(tampered, timeout=10)
        assert e.value.code == 403
    for ttl in (0, 901):
        r = cli.run("presign", "dl/x", ttl)
        assert r["error"]["kind"] == "invalid_argument"


@pytest.mark.parametrize("key", [
    "sp ace/a b  c.txt",
    "uni/d\u00e9j\u00e0 vu \u20ac \U0001F600.txt",
    "tilde/~x~y",
    "plus/a+b+c",
    "marks/(1)!*,;=@$:.txt",
    "quotes/it's a&b.txt",
    "pct/100%25 done",
])
def test_awkward_keys(cli, s3, key):
    cli.ok("putbuf", key, "payload:" + key)
    r = cli.ok("getbuf", key, 1000)
    assert base64.b64decode(r["data_b64"]).decode() == "payload:" + key
    top = key.split("/")[0] + "/"
    listed = [e["key"] for e in cli.ok("list", top)["entries"]]
    if any(c in key for c in "&'\"<>"):
        # s3rver escapes these twice in its XML ("&amp;amp;"); real S3 once.
        # The entity decoding itself is unit-tested (tests/unit/test_s3_store.c).
        assert len(listed) == 1
    else:
        assert listed == [key]
    assert cli.ok("head", key)["size"] == len(("payload:" + key).encode())
    url = cli.ok("presign", key, 30)["url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read().decode() == "payload:" + key
    cli.ok("del", key)
    assert cli.ok("list", top)["n"] == 0


def test_prefix(s3, tmp_path):
    pre = Cli(s3, prefix="tenant-a/")
    plain = Cli(s3)
    pre.ok("putbuf", "x/y.json", "1")
    assert os.path.exists(s3.object_path("tenant-a/x/y.json"))
    assert [e["key"] for e in pre.ok("list", "x/")["entries"]] == ["x/y.json"]
    assert [e["key"] for e in plain.ok("list", "")["entries"]] == ["tenant-a/x/y.json"]
    url = pre.ok("presign", "x/y.json", 30)["url"]
    assert "/tenant-a/x/y.json?" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"1"


def test_outage_shorter_than_the_retries(s3, tmp_path):
    """The server goes away in the middle of a sequence of puts and comes
    back on the same port: the put that met the outage succeeds after
    retries (20 tries, waits up to 1 s each: ~9 s of retry window on
    average, the outage is ~1.5 s)."""
    cli = Cli(s3, tries=20, base_ms=200, cap_ms=1000, connect_timeout_ms=1000)
    src = write(tmp_path / "f", os.urandom(200000))
    p = subprocess.Popen(cli.argv("putmany", "seq/k", src, 12, interval_ms=150),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        for _ in range(3):
            lines.append(json.loads(p.stdout.readline()))
        s3.stop()
        time.sleep(1.5)
        s3.start()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines += [json.loads(l) for l in out.decode().splitlines() if l.strip()]
    assert len(lines) == 12, lines
    assert all(l["ok"] for l in lines), [l for l in lines if not l["ok"]]
    assert p.returncode == 0, err.decode()[-2000:]
    slow = max(l["elapsed_ms"] for l in lines)
    assert slow > 1000, lines  # one of them waited the outage out
    for i in range(12):
        assert os.path.getsize(s3.object_path(f"seq/k{i}")) == 200000


def test_outage_longer_than_the_retries(s3, tmp_path):
    cli = Cli(s3, tries=3, base_ms=50, cap_ms=100, connect_timeout_ms=500)
    cli.ok("putbuf", "warm", "1")
    s3.stop()
    t0 = time.monotonic()
    r = cli.run("put", "gone/k", write(tmp_path / "f", b"abc"))
    assert time.monotonic() - t0 < 10
    assert r["error"]["kind"] == "io", r
    msg = r["error"]["message"]
    assert "after 3 tries" in msg and "connect" in msg, msg
    r = cli.run("getbuf", "warm", 10)
    assert r["error"]["kind"] == "io" and "after 3 tries" in r["error"]["message"]
    s3.start()
    assert cli.ok("getbuf", "warm", 10)["len"] == 1


def test_file_backend_range_through_harness(tmp_path):
    """The same harness drives the file backend: getrange agrees with S3's."""
    root = tmp_path / "objects"
    argv = lambda *a: [storecli_path(), "--backend", "file", "--root", str(root)] + \
        [str(x) for x in a]
    data = b"0123456789" * 100
    src = write(tmp_path / "src", data)
    assert subprocess.run(argv("put", "a/b.log", src), capture_output=True).returncode == 0
    p = subprocess.run(argv("getrange", "a/b.log", 995, 100), capture_output=True)
    r = json.loads(p.stdout)
    assert r["ok"] and base64.b64decode(r["data_b64"]) == data[995:] and r["size"] == 1000
