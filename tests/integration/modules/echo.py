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
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "contrib", "sdk", "python"))
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
    name = ctx.params.get("artifact")
    if name:
        with open(os.path.join(ctx.workdir, name + ".txt"), "w") as f:
            f.write(f"{ctx.stage} wrote this\n")
        ctx.artifact(name, name + ".txt", "text", format="txt")
    inputs = {}
    for i in ctx.inputs:
        try:
            inputs[i.name] = i.read_json()
        except ValueError:
            inputs[i.name] = {"unreadable": i.read_text()[:200]}
    return {"stage": ctx.stage, "attempt": ctx.attempt, "pid": os.getpid(),
            "nonce": secrets.token_hex(8), "inputs": inputs}


if __name__ == "__main__":
    module.run()
