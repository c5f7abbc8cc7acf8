#!/usr/bin/python3
"""sleep: a one-shot test module that sleeps params.seconds (default 1),
sending progress every params.tick seconds (default 0.1) and answering a
cancel at once with error {category: cancelled}. Output: {"slept": seconds}.

A negative or non-numeric seconds is an input error (never retried).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
import time  # noqa: E402

from stageline_module import Module, ModuleError  # noqa: E402

module = Module("sleep", "1.0")


def number(ctx, key, default):
    v = ctx.params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ModuleError(f"params.{key} must be a number >= 0, not {v!r}", code="BAD_PARAM",
                          category="input", param=key)
    return float(v)


@module.task
def handle(ctx):
    seconds = number(ctx, "seconds", 1)
    tick = max(number(ctx, "tick", 0.1), 0.001)
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        ctx.progress(elapsed / seconds if seconds else 1.0, current=int(elapsed * 1000),
                     total=int(seconds * 1000))
        ctx.wait(min(tick, seconds - elapsed))
        ctx.check_cancelled()
    ctx.progress(1.0, "done")
    return {"slept": seconds}


if __name__ == "__main__":
    module.run()
