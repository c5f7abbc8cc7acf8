#!/usr/bin/python3
"""hang: a one-shot test module that ignores SIGTERM and cancel and never
answers, so only SIGKILL ends it (for the daemon's deadline escalation).

With HANG_BEFORE_HELLO=1 in its environment (the module's config env) it
hangs before its hello instead, for the daemon's hello timeout.
"""
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("HANG_BEFORE_HELLO") == "1":
    sys.stderr.write("hang: hanging before hello\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
from stageline_module import Module  # noqa: E402

module = Module("hang", "1.0")


@module.task
def handle(ctx):
    sys.stderr.write("hang: task received; it ignores cancel and SIGTERM\n")
    sys.stderr.flush()
    noted = False
    while True:
        time.sleep(0.05)
        if ctx.cancelled and not noted:
            noted = True
            sys.stderr.write(f"hang: cancel ({ctx.cancel_reason}) received and ignored\n")
            sys.stderr.flush()


if __name__ == "__main__":
    module.run()
