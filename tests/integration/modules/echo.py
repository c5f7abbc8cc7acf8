#!/usr/bin/python3
"""echo: a one-shot test module for tests/integration/test_engine.py.

It sleeps params.seconds (default 0; answering a cancel at once), then
answers with what it was given, so a test can see exactly which outputs
reached a stage and which attempt produced an output:

  {"stage": ..., "attempt": n, "pid": ..., "nonce": <random hex>,
   "inputs": {"<name>": <parsed JSON of the input>, ...}}

params.fail_attempts (default 0): the first that many attempts fail with a
retryable module error (code ECHO_FAIL) instead.

params.artifact (a name): also writes <name>.txt ("<stage> wrote this") and
declares it as an output artifact (type "text", format "txt").

params.blob_bytes (n): also writes blob.bin, n pseudo-random bytes, declared
as an output artifact with meta {seed} (for sizes and hashes).

params.scratch (a name): writes <name>.tmp and declares it an intermediate
file, retained when params.keep_scratch is true, with a reason.

params.log_lines (n), params.log_every (seconds, default 0): writes n stderr
lines "line <i> of <stage>", that many seconds apart, before answering.

params.warn (text): a warning frame with that message.

Abuse tests: params.stderr_hex writes those raw bytes (hex) to stderr;
params.raw_artifact_path declares an artifact with that path as a raw frame
(bypassing the SDK's own checks); params.symlink_to writes evil.txt as a
symlink to that path and declares it; params.extra is added to the result;
params.show_env adds the module's whole environment to it.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "contrib", "sdk", "python"))
import hashlib  # noqa: E402
import secrets  # noqa: E402

from stageline_module import Module, ModuleError  # noqa: E402

module = Module("echo", "1.0")


@module.task
def handle(ctx):
    seconds = ctx.params.get("seconds", 0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ModuleError(f"params.seconds must be a number >= 0, not {seconds!r}",
                          code="BAD_PARAM", category="input")
    if seconds:
        ctx.wait(seconds)
        ctx.check_cancelled()
    if ctx.attempt <= ctx.params.get("fail_attempts", 0):
        raise ModuleError(f"attempt {ctx.attempt}: failing on purpose", code="ECHO_FAIL",
                          category="module", retryable=True)
    for i in range(ctx.params.get("log_lines", 0)):
        print(f"line {i} of {ctx.stage}", file=sys.stderr, flush=True)
        if ctx.params.get("log_every"):
            ctx.wait(ctx.params["log_every"])
            ctx.check_cancelled()
    if ctx.params.get("stderr_hex"):
        sys.stderr.buffer.write(bytes.fromhex(ctx.params["stderr_hex"]) + b"\n")
        sys.stderr.flush()
    if ctx.params.get("raw_artifact_path") is not None:
        ctx._send({"t": "artifact", "task_id": ctx.task_id, "name": "evil",
                   "path": ctx.params["raw_artifact_path"], "type": "file", "role": "output",
                   "retained": True})
    if ctx.params.get("symlink_to"):
        os.symlink(ctx.params["symlink_to"], os.path.join(ctx.workdir, "evil.txt"))
        ctx.artifact("evil", "evil.txt", "file")
    if ctx.params.get("warn"):
        ctx.warning(ctx.params["warn"])
    n = ctx.params.get("blob_bytes")
    if n is not None:
        import random
        rnd = random.Random(n)
        with open(os.path.join(ctx.workdir, "blob.bin"), "wb") as f:
            left = n
            while left > 0:
                k = min(left, 1 << 16)
                f.write(rnd.randbytes(k))
                left -= k
        ctx.artifact("blob", "blob.bin", "binary", format="bin", seed=n)
    scratch = ctx.params.get("scratch")
    if scratch:
        with open(os.path.join(ctx.workdir, scratch + ".tmp"), "w") as f:
            f.write("scratch\n")
        ctx.artifact(scratch, scratch + ".tmp", "text", role="intermediate",
                     retained=bool(ctx.params.get("keep_scratch")), reason="kept for debugging")
    name = ctx.params.get("artifact")
    if name:
        with open(os.path.join(ctx.workdir, name + ".txt"), "w") as f:
            f.write(f"{ctx.stage} wrote this\n")
        ctx.artifact(name, name + ".txt", "text", format="txt")
    inputs = {}
    for i in ctx.inputs:
        try:
            inputs[i.name] = i.read_json()
        except ValueError:  # UnicodeDecodeError too: a binary file
            with open(i.path, "rb") as f:
                data = f.read()
            inputs[i.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    out = {"stage": ctx.stage, "attempt": ctx.attempt, "pid": os.getpid(),
           "nonce": secrets.token_hex(8), "inputs": inputs}
    if "extra" in ctx.params:
        out["extra"] = ctx.params["extra"]
    if ctx.params.get("show_env"):
        out["env"] = dict(os.environ)
    return out


if __name__ == "__main__":
    module.run()
