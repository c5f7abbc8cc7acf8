#!/usr/bin/python3
"""flaky: a one-shot test module that fails its first params.failures
attempts (default 1) with a retryable module error (code FLAKY), judged by
the task's attempt number, then succeeds with {"attempt": n}.

params.category (default "module") picks the failure's category, e.g.
"input" to check that input errors are never retried.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
from stageline_module import Module, ModuleError  # noqa: E402

module = Module("flaky", "1.0")


@module.task
def handle(ctx):
    failures = ctx.params.get("failures", 1)
    category = ctx.params.get("category", "module")
    if ctx.attempt <= failures:
        ctx.log("info", "failing on purpose", attempt=ctx.attempt, failures=failures)
        raise ModuleError(f"attempt {ctx.attempt} of {failures} planned failures",
                          code="FLAKY", category=category, attempt=ctx.attempt)
    return {"attempt": ctx.attempt}


if __name__ == "__main__":
    module.run()
