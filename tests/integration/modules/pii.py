#!/usr/bin/python3
"""pii: a test module for tests/integration/test_scrub.py that writes
personal data everywhere a module can: stderr lines, log frames (message
and fields), a progress message, a warning and, with params.fail, its error
message and detail. The addresses and numbers come from params.say (a list
of strings), so the test knows exactly what to look for; params.echo_keys
names params (dotted paths) whose values it also prints to stderr, the way
a careless module echoes its inputs.

params.go_file: wait (up to 30 s) until this file exists before writing
anything, so a test can attach a live stream first.

With --persistent on the command line it says hello as a persistent module
(its stderr then goes to the daemon's own log, not to a stage log).
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "contrib", "sdk", "python"))
from stageline_module import Module, ModuleError  # noqa: E402

PERSISTENT = "--persistent" in sys.argv
module = Module("pii", "1.0", persistent=PERSISTENT, concurrency=2 if PERSISTENT else 1)


def lookup(params, path):
    v = params
    for part in path.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


@module.task
def handle(ctx):
    go = ctx.params.get("go_file")
    if go:
        deadline = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < deadline:
            ctx.wait(0.02)
            ctx.check_cancelled()
    say = ctx.params.get("say", [])
    for s in say:
        print(f"stderr: contact {s} now", file=sys.stderr, flush=True)
    for path in ctx.params.get("echo_keys", []):
        print(f"stderr: {path} is {lookup(ctx.params, path)}", file=sys.stderr, flush=True)
    if say:
        ctx.log("info", f"log frame: reach {say[0]}", contact=say[-1], note=f"or {say[0]}")
        ctx.progress(0.5, f"progress: mailing {say[0]}")
        ctx.warning(f"warning: bounced {say[-1]}")
    if ctx.params.get("fail"):
        raise ModuleError(f"cannot reach {' or '.join(say)}", code="UNREACHABLE",
                          category="input", contact=say[0] if say else None)
    return {"said": len(say)}


if __name__ == "__main__":
    module.run()
