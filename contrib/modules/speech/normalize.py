#!/usr/bin/python3
"""normalize: resamples the tts stage's speech.wav to what the recognizer
wants, 16 kHz mono 16-bit signed PCM WAV (audio16k.wav), with sox.

Progress is sox's own (-S), read from its stderr. -R makes the result
repeatable: the same speech.wav always gives the same audio16k.wav.
"""

import os

import speechlib as sl
from speechlib import Module

OUTPUT = "audio16k.wav"
RATE, CHANNELS, BITS = 16000, 1, 16


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="finding the audio")
    src = sl.stage_file(ctx, "tts", "audio", type="audio", format="wav")
    if src is None:
        src = sl.find_input(ctx, type="audio")
    if src is None:
        raise sl.input_error("no audio among the inputs (expected tts's speech.wav)", "NO_AUDIO")
    ctx.log("info", "normalizing", source=src.name, size_bytes=src.size_bytes,
            rate=RATE, channels=CHANNELS, bits=BITS)

    out = os.path.join(ctx.workdir, OUTPUT)
    progress.phase(0.05, 0.95)
    # -R: sox dithers after resampling, with a random seed unless told to
    # be repeatable; the same text must give the same audio (and transcript).
    tool = sl.Tool(ctx, ["sox", "-R", "-S", src.path, "-r", str(RATE), "-c", str(CHANNELS),
                         "-b", str(BITS), "-e", "signed-integer", out],
                   on_stderr_piece=sl.sox_progress(
                       lambda f: progress(f, message="resampling")))
    rc = tool.wait()
    if rc != 0:
        err = " ".join(tool.stderr_text())
        if "FAIL formats" in err or "can't open input" in err or "no handler" in err:
            raise sl.input_error(f"sox cannot read the audio {src.name}", "BAD_AUDIO",
                                 sox=tool.stderr_text()[-3:])
        raise sl.ModuleError(f"sox failed (exit {rc})", code="SOX_FAILED", exit_code=rc)

    info = sl.wav_info(out)
    try:
        before = sl.wav_info(src.path)
    except Exception:  # sox reads more than the wave module does
        before = {}
    ctx.artifact(OUTPUT, OUTPUT, "audio", format="wav", sample_rate=info["sample_rate"],
                 channels=info["channels"], bits_per_sample=info["bits_per_sample"],
                 duration_seconds=info["duration_seconds"])
    progress.done("done")
    return {
        "audio": OUTPUT,
        "duration_seconds": info["duration_seconds"],
        "sample_rate": info["sample_rate"],
        "channels": info["channels"],
        "bits_per_sample": info["bits_per_sample"],
        "samples": info["samples"],
        "source_sample_rate": before.get("sample_rate"),
        "source_channels": before.get("channels"),
    }


if __name__ == "__main__":
    Module("sox", sl.VERSION).run(handle)
