#!/usr/bin/python3
"""sse_gate: a one-shot module for tests/bench/sse.sh. It waits until the
file params.gate exists (checked every 10 ms), then answers {"opened": true}.
It sends no progress, so the job's streams stay idle while it waits: the
benchmark connects its clients, measures the server's memory, then creates
the file and the rest of the pipeline runs.

params.gate_timeout (seconds, default 600): give up with an input error.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "contrib", "sdk", "python"))

from stageline_module import Module, ModuleError  # noqa: E402

module = Module("sse_gate", "1.0")


@module.task
def handle(ctx):
    path = ctx.params.get("gate")
    if not isinstance(path, str) or not path:
        raise ModuleError("params.gate must be a file name", code="BAD_PARAM",
                          category="input", param="gate")
    limit = float(ctx.params.get("gate_timeout", 600))
    start = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - start > limit:
            raise ModuleError(f"{path} did not appear in {limit:g} s", code="GATE_TIMEOUT",
                              category="input")
        ctx.wait(0.01)
        ctx.check_cancelled()
    return {"opened": True}


if __name__ == "__main__":
    module.run()
