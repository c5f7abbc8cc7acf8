#!/usr/bin/python3
"""flood: a one-shot test module that writes params.stdout_mb MiB (default
1) of valid log and progress frames and params.stderr_mb MiB (default 1) of
stderr lines as fast as it can, interleaved so both pipes are under
pressure at once, then answers {"stdout_bytes", "stderr_bytes",
"log_frames", "progress_frames"} (stdout_bytes counts those frames only,
length prefixes included, not hello or result).

params.message_bytes (default 1000) sizes each log message; every 16th
frame is a progress frame. Checks the daemon's log truncation (8 MiB per
task) and its backpressure (a flooding module blocks, memory stays flat).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
from stageline_module import Module, encode_frame  # noqa: E402

MiB = 1024 * 1024
module = Module("flood", "1.0", progress_interval=0)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@module.task
def handle(ctx):
    out_target = int(float(ctx.params.get("stdout_mb", 1)) * MiB)
    err_target = int(float(ctx.params.get("stderr_mb", 1)) * MiB)
    message = "f" * int(ctx.params.get("message_bytes", 1000))
    log_size = len(encode_frame({"t": "log", "task_id": ctx.task_id, "level": "info",
                                 "message": message}))
    progress_size = len(encode_frame({"t": "progress", "task_id": ctx.task_id,
                                      "fraction": 0.5}))
    out = err = logs = progresses = 0
    line_no = 0
    while out < out_target or err < err_target:
        for _ in range(8):
            if out >= out_target:
                break
            if (logs + progresses) % 16 == 15:
                ctx.progress(out / out_target)
                out += progress_size
                progresses += 1
            else:
                ctx.log("info", message)
                out += log_size
                logs += 1
        if err < err_target:
            lines = []
            for _ in range(64):
                line = f"flood stderr line {line_no:012d} "
                lines.append(line + "e" * (127 - len(line)) + "\n")
                line_no += 1
            block = "".join(lines).encode()[: err_target - err]
            write_all(2, block)
            err += len(block)
    return {"stdout_bytes": out, "stderr_bytes": err, "log_frames": logs,
            "progress_frames": progresses}


if __name__ == "__main__":
    module.run()
