"""The C SigV4 signer (src/store/sigv4.c, through tests/harness/sigv4sign)
against @smithy/signature-v4, the signer of @aws-sdk/client-s3, on
thousands of seeded random S3 requests: keys with spaces, multi-byte UTF-8,
~ + ! * ' ( ) and literal '%', nested and empty segments; queries with
repeated, bare and empty parameters; mixed-case headers with whitespace
runs; session tokens; presigned URLs. tests/integration/sigv4_crosscheck.mjs
does the work and documents how the same wire request is given to both.

Needs the npm tools (contrib/npm-tools) and SIGV4SIGN (make
check-integration sets it)."""

import json
import os
import subprocess

from conftest import node_env, sigv4sign_path

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "sigv4_crosscheck.mjs")
N = 2000


def run_crosscheck(n, seed):
    harness = sigv4sign_path()
    node, env = node_env()
    r = subprocess.run([node, SCRIPT, "--harness", harness, "--n", str(n), "--seed", str(seed)],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = r.stdout.strip().splitlines()
    assert lines, f"sigv4_crosscheck.mjs printed nothing (exit {r.returncode}):\n{r.stderr[-8000:]}"
    return r, json.loads(lines[-1])


def test_c_signer_matches_smithy():
    r, summary = run_crosscheck(N, seed=20240601)
    assert summary["compared"] == N, summary
    assert summary["sign"] > N // 2 and summary["presign"] > N // 10, summary
    assert summary["sloppy"] > 0, summary
    assert summary["mismatches"] == 0, f"{summary}\n{r.stderr[-20000:]}"
    assert r.returncode == 0, r.stderr[-4000:]


def test_crosscheck_detects_a_difference():
    """The comparison itself works: a harness that signs one second late
    must mismatch on every request."""
    harness = sigv4sign_path()
    node, env = node_env()
    shim = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sigv4sign-late-{os.getpid()}.py")
    with open(shim, "w") as f:
        f.write(f"""#!/usr/bin/python3
import json, subprocess, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
for x in lines:
    x["time"] += 1
out = subprocess.run([{harness!r}], input="".join(json.dumps(x) + "\\n" for x in lines),
                     capture_output=True, text=True)
sys.stdout.write(out.stdout)
sys.exit(out.returncode)
""")
    os.chmod(shim, 0o755)
    try:
        r = subprocess.run([node, SCRIPT, "--harness", shim, "--n", "50", "--report", "1"],
                           capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.unlink(shim)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["compared"] == 50 and summary["mismatches"] == 50, summary
    assert r.returncode == 1
    assert "C canonical request:" in r.stderr and "smithy canonical request:" in r.stderr
