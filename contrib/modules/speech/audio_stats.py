#!/usr/bin/python3
"""audio-stats: `sox audio16k.wav -n stats` turned into JSON (stats.json):
levels in dBFS (RMS, peak), DC offset, crest factor, length and the like,
per channel when there are several. Progress is sox's own (-S).
"""

import math
import os
import re

import speechlib as sl
from speechlib import Module

OUTPUT = "stats.json"
KEYS = {
    "DC offset": "dc_offset",
    "Min level": "min_level",
    "Max level": "max_level",
    "Pk lev dB": "peak_level_db",
    "RMS lev dB": "rms_level_db",
    "RMS Pk dB": "rms_peak_db",
    "RMS Tr dB": "rms_trough_db",
    "Crest factor": "crest_factor",
    "Flat factor": "flat_factor",
    "Pk count": "peak_count",
    "Bit-depth": "bit_depth",
    "Num samples": "num_samples",
    "Length s": "length_seconds",
    "Scale max": "scale_max",
    "Window s": "window_seconds",
}


def value(text):
    """A number when it is one (JSON has no infinities: silence gives
    -inf dB, which becomes null); sox's abbreviations ('107k', '16/16') stay
    text."""
    if text == "-":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else None


def parse_stats(lines):
    """sox's stats table: {"overall": {...}} and, for several channels,
    {"channels": {"Left"|"Ch1"...: {...}}}."""
    columns = ["overall"]
    rows = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("In:") or " : " in line:
            continue  # sox -S's progress and its file header
        parts = re.split(r"\s{2,}", line.strip())
        if line.startswith(" ") and parts and parts[0] == "Overall":
            columns = parts
            continue
        if len(parts) < 2:
            continue
        key = KEYS.get(parts[0]) or re.sub(r"[^a-z0-9]+", "_", parts[0].lower()).strip("_")
        rows[key] = parts[1].split()
    overall = {k: value(v[0]) for k, v in rows.items() if v}
    result = {"overall": overall}
    if len(columns) > 1:
        result["channels"] = {}
        for c, name in enumerate(columns[1:], start=1):
            result["channels"][name] = {k: value(v[c]) for k, v in rows.items() if len(v) > c}
    return result


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="finding the audio")
    audio = sl.stage_file(ctx, "normalize", "audio", type="audio", format="wav")
    if audio is None:
        raise sl.input_error("no audio among the inputs (expected normalize's audio16k.wav)",
                             "NO_AUDIO")
    progress.phase(0.05, 0.9)
    tool = sl.Tool(ctx, ["sox", "-S", audio.path, "-n", "stats"],
                   on_stderr_piece=sl.sox_progress(lambda f: progress(f, message="measuring")))
    rc = tool.wait()
    progress.phase(0.0, 1.0)
    if rc != 0:
        raise sl.ModuleError(f"sox stats failed (exit {rc})", code="SOX_FAILED", exit_code=rc,
                             stderr=tool.stderr_text()[-5:])
    stats = parse_stats(tool.stderr_text())
    if "rms_level_db" not in stats["overall"] and "length_seconds" not in stats["overall"]:
        raise sl.ModuleError("sox printed no statistics", code="NO_STATS",
                             stderr=tool.stderr_text()[-5:])
    progress(0.95, message="writing stats.json")
    try:
        info = sl.wav_info(audio.path)
    except Exception:
        info = {}
    doc = {"file": audio.name, **info, **stats}
    sl.write_json(os.path.join(ctx.workdir, OUTPUT), doc)
    o = stats["overall"]
    ctx.artifact(OUTPUT, OUTPUT, "metadata", format="json", rms_level_db=o.get("rms_level_db"),
                 peak_level_db=o.get("peak_level_db"))
    progress.done("done")
    return {
        "stats": OUTPUT,
        "rms_level_db": o.get("rms_level_db"),
        "peak_level_db": o.get("peak_level_db"),
        "dc_offset": o.get("dc_offset"),
        "crest_factor": o.get("crest_factor"),
        "length_seconds": o.get("length_seconds"),
        "samples": info.get("samples"),
        "sample_rate": info.get("sample_rate"),
        "channels": info.get("channels"),
    }


if __name__ == "__main__":
    Module("stats", sl.VERSION).run(handle)
