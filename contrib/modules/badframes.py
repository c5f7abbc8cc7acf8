#!/usr/bin/python3
"""badframes: a one-shot test module that, after hello and its task, sends
one malformed frame chosen by params.kind, then lingers params.linger
seconds (default 0) and exits 0 without answering. Every kind is a protocol
error the daemon must turn into a panic:

  oversize        a well-formed log frame one byte over params.max_frame_bytes
                  (default 16 MiB); its length prefix alone gives it away
  not_map         a frame holding a msgpack array
  no_t            a map without the key t
  unknown_t       t = "bogus"
  garbage         a frame whose payload is not msgpack (bytes 0xc1)
  truncated       a length prefix of 100, then 10 bytes, then EOF
  stray_text      a bare text line on stdout, as a stray print would write
  bad_type        a progress frame whose fraction is a string
  bin_in_json     a result whose output holds bin data
  second_hello    another hello
  unknown_task_id a progress frame for a task the daemon never sent

It writes on the SDK's private protocol descriptor (module._conn), which
no real module should touch.
"""
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
import time  # noqa: E402

import msgpack  # noqa: E402
from stageline_module import MAX_FRAME_BYTES, Module, ModuleError  # noqa: E402

module = Module("badframes", "1.0")


def framed(payload):
    return struct.pack(">I", len(payload)) + payload


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def oversize(ctx):
    n = int(ctx.params.get("max_frame_bytes", MAX_FRAME_BYTES)) + 1
    base = {"t": "log", "task_id": ctx.task_id, "level": "info"}
    bare = len(pack(dict(base, message=""))) - 1  # without the message's str header
    for header in (1, 2, 3, 5):  # msgpack str header sizes
        payload = pack(dict(base, message="x" * max(0, n - bare - header)))
        if len(payload) == n:
            return framed(payload)
    raise ModuleError(f"no log frame is exactly {n} bytes", code="BAD_PARAM", category="input")


KINDS = {
    "oversize": oversize,
    "not_map": lambda ctx: framed(pack(["log", ctx.task_id, "info", "an array"])),
    "no_t": lambda ctx: framed(pack({"task_id": ctx.task_id, "message": "no t"})),
    "unknown_t": lambda ctx: framed(pack({"t": "bogus", "task_id": ctx.task_id})),
    "garbage": lambda ctx: framed(b"\xc1" * 16),
    "truncated": lambda ctx: struct.pack(">I", 100) + pack({"t": "log"})[:10].ljust(10, b"\0"),
    "stray_text": lambda ctx: b"hello from a stray print\n",
    "bad_type": lambda ctx: framed(pack({"t": "progress", "task_id": ctx.task_id,
                                         "fraction": "half"})),
    "bin_in_json": lambda ctx: framed(pack({"t": "result", "task_id": ctx.task_id,
                                            "output": {"blob": b"\x00\x01"}})),
    "second_hello": lambda ctx: framed(pack({"t": "hello", "protocol": 1, "module": "badframes",
                                             "version": "1.0"})),
    "unknown_task_id": lambda ctx: framed(pack({"t": "progress",
                                                "task_id": "00000000-0000-0000-0000-000000000000",
                                                "fraction": 0.5})),
}


@module.task
def handle(ctx):
    kind = ctx.params.get("kind")
    if kind not in KINDS:
        raise ModuleError(f"params.kind {kind!r} is not one of {sorted(KINDS)}",
                          code="BAD_PARAM", category="input")
    data = KINDS[kind](ctx)
    sys.stderr.write(f"badframes: sending {kind} ({len(data)} bytes)\n")
    sys.stderr.flush()
    fd = module._conn.out_fd
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view[: 1 << 20]):]
    except OSError as e:  # the daemon may close the pipe before the end
        sys.stderr.write(f"badframes: write stopped: {e}\n")
    time.sleep(float(ctx.params.get("linger", 0)))
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    module.run()
