#!/usr/bin/python3
"""tts: the speech-demo's first stage. Speaks the job input's text with
espeak-ng into speech.wav.

params: voice (an espeak-ng voice, default en-us), speed (words per minute,
80..450, default 150). The text comes from the job input ({"text": "..."});
a missing or empty text is an input error. Progress follows the WAV file as
espeak-ng writes it, against the length the word count and speed predict.
"""

import os
import re
import tempfile

import speechlib as sl
from speechlib import Module

DEFAULT_VOICE = "en-us"
DEFAULT_SPEED = 150
OUTPUT = "speech.wav"
BYTES_PER_SECOND = 22050 * 2  # espeak-ng's own voices: 22.05 kHz, 16-bit mono


def params_of(ctx):
    params = ctx.params or {}
    voice = params.get("voice", DEFAULT_VOICE)
    if voice is None:
        voice = DEFAULT_VOICE
    if not isinstance(voice, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_+.-]{0,63}", voice):
        raise sl.input_error(f"voice must be an espeak-ng voice name, got {voice!r}",
                             "BAD_VOICE")
    speed = params.get("speed", DEFAULT_SPEED)
    if speed is None:
        speed = DEFAULT_SPEED
    if isinstance(speed, float) and speed.is_integer():
        speed = int(speed)
    if isinstance(speed, bool) or not isinstance(speed, int) or not 80 <= speed <= 450:
        raise sl.input_error(f"speed must be an integer from 80 to 450 (words per minute), "
                             f"got {speed!r}", "BAD_SPEED")
    return voice, speed


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="reading the text")
    text = sl.job_text(ctx)
    voice, speed = params_of(ctx)
    words = len(sl.tokenize(text))
    ctx.log("info", "synthesizing", voice=voice, speed=speed, words=words, characters=len(text))

    out = os.path.join(ctx.workdir, OUTPUT)
    # Sentence pauses and slower long words: a generous estimate, so the bar
    # does not stall at its cap for long.
    expected = max(1, int((words / speed * 60.0 + 0.5) * 1.2 * BYTES_PER_SECOND))
    # espeak-ng's audio library starts a PulseAudio client even when writing
    # a file, and that leaves $XDG_CONFIG_HOME/pulse behind: keep it out of
    # the workdir (HOME is the workdir), where it would be an undeclared file.
    scratch = tempfile.TemporaryDirectory(prefix="tts-")
    tool = sl.Tool(ctx, ["espeak-ng", "-v", voice, "-s", str(speed), "-w", out, "--stdin"],
                   feed=True, env={"XDG_CONFIG_HOME": scratch.name})
    try:
        tool.proc.stdin.write(text.encode("utf-8"))
        tool.proc.stdin.close()
    except BrokenPipeError:
        pass

    def tick():
        try:
            size = os.path.getsize(out)
        except OSError:
            return
        progress(min(0.95, size / expected), message="synthesizing", current=size)

    progress.phase(0.05, 0.95)
    try:
        rc = tool.wait(tick)
    finally:
        scratch.cleanup()
    if rc != 0:
        if any("voice does not exist" in line for line in tool.stderr_text()):
            raise sl.input_error(f"espeak-ng has no voice {voice!r}", "UNKNOWN_VOICE", voice=voice)
        raise sl.ModuleError(f"espeak-ng failed (exit {rc})", code="TTS_FAILED", exit_code=rc)
    if not os.path.exists(out) or os.path.getsize(out) <= 44:
        raise sl.ModuleError("espeak-ng wrote no audio", code="TTS_NO_AUDIO")

    info = sl.wav_info(out)
    ctx.artifact(OUTPUT, OUTPUT, "audio", format="wav", sample_rate=info["sample_rate"],
                 channels=info["channels"], duration_seconds=info["duration_seconds"])
    progress.done("done")
    return {
        "audio": OUTPUT,
        "voice": voice,
        "speed": speed,
        "words": words,
        "characters": len(text),
        "duration_seconds": info["duration_seconds"],
        "sample_rate": info["sample_rate"],
        "channels": info["channels"],
        "engine": "espeak-ng",
    }


if __name__ == "__main__":
    Module("tts", sl.VERSION).run(handle)
