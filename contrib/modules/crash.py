#!/usr/bin/python3
"""crash: a one-shot test module that says hello, takes its task, then
kills itself with SIGSEGV without answering (the daemon must end the task
as a retryable panic).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
import time  # noqa: E402

from stageline_module import Module  # noqa: E402

module = Module("crash", "1.0")


@module.task
def handle(ctx):
    sys.stderr.write(f"crash: task {ctx.task_id}: raising SIGSEGV\n")
    sys.stderr.flush()
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)  # not reached: the signal is delivered before kill() returns
    return {}


if __name__ == "__main__":
    module.run()
