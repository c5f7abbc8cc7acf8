#!/usr/bin/python3
"""subtitles: SRT subtitles (subtitles.srt) from align's word timings.

Words are grouped into cues of at most 7 words spanning at most 3 seconds:
the text is cut at sentence ends and at pauses of a second or more, and each
such run into the fewest cues of near-equal length that keep to the limits.
Words the aligner could not time (not in its dictionary) stay in the text of
the cue around them, so the subtitles show the whole text.
"""

import os
import re

import speechlib as sl
from speechlib import Module

OUTPUT = "subtitles.srt"
MAX_WORDS = 7
MAX_SECONDS = 3.0
PAUSE_SECONDS = 1.0


def srt_time(seconds):
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3600000)
    m, ms = divmod(ms, 60000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def cue_text(words, prefix=""):
    text = prefix + "".join(w["word"] + w.get("text_after", " ") for w in words)
    return re.sub(r"\s+", " ", text).strip()


def span(words):
    """(start, end) of the timed words among words, or None."""
    timed = [w for w in words if w.get("start") is not None]
    return (timed[0]["start"], timed[-1]["end"]) if timed else None


def sentences(words, pause):
    """Runs of words ended by sentence punctuation or a long pause."""
    runs, cur, last_end = [], [], None
    for w in words:
        timed = w.get("start") is not None
        if cur and timed and last_end is not None and w["start"] - last_end >= pause:
            # Untimed words just before the pause were most likely said in
            # it: they go with what follows.
            k = max((i + 1 for i, x in enumerate(cur) if x.get("start") is not None),
                    default=0)
            if k:
                runs.append(cur[:k])
                cur = cur[k:]
        cur.append(w)
        if timed:
            last_end = w["end"]
        if re.search(r"[.!?]", w.get("text_after", "")):
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def group(words, max_words=MAX_WORDS, max_seconds=MAX_SECONDS, pause=PAUSE_SECONDS):
    """[(start, end, [words])]: each sentence cut into the fewest cues of
    near-equal length that keep to the limits (a single word may be longer
    than max_seconds). Untimed words stay in the cue they fall in; a run
    with no timed word at all joins the cue before it (or after it)."""
    def fits(part):
        sp = span(part)
        return len(part) <= max_words and (
            sp is None or sp[1] - sp[0] <= max_seconds
            or sum(w.get("start") is not None for w in part) == 1)

    parts = []
    for run in sentences(words, pause):
        n = len(run)
        for k in range(1, n + 1):
            sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
            cut, at = [], 0
            for size in sizes:
                cut.append(run[at:at + size])
                at += size
            if all(fits(c) for c in cut):
                parts += cut
                break
    cues, orphans = [], []
    for part in parts:
        sp = span(part)
        if sp is None:
            if cues:
                s, e, ws = cues[-1]
                cues[-1] = (s, e, ws + part)
            else:
                orphans += part
            continue
        cues.append((sp[0], sp[1], orphans + part))
        orphans = []
    # A cue that starts with untimed words starts earlier, into the gap
    # where they were most likely said, as far as the limits allow.
    for i, (s, e, ws) in enumerate(cues):
        if ws[0].get("start") is None:
            prev_end = cues[i - 1][1] + 0.01 if i else 0.0
            cues[i] = (min(s, max(prev_end, e - max_seconds)), e, ws)
    return cues


def render(cues, prefix=""):
    out = []
    for n, (start, end, words) in enumerate(cues, start=1):
        end = max(end, start + 0.01)
        out.append(f"{n}\n{srt_time(start)} --> {srt_time(end)}\n"
                   f"{cue_text(words, prefix if n == 1 else '')}\n")
    return "\n".join(out)


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="reading the alignment")
    inp = sl.stage_file(ctx, "align", "alignment", type="alignment", format="json")
    if inp is None:
        raise sl.input_error("no alignment among the inputs (expected align's alignment.json)",
                             "NO_ALIGNMENT")
    try:
        doc = sl.read_json_input(inp)
        words = doc["words"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise sl.input_error(f"the alignment cannot be read: {e}", "BAD_ALIGNMENT")
    progress(0.3, message="grouping words into cues")
    cues = group(words)
    if not cues:
        raise sl.input_error("the alignment has no timed words", "NO_TIMED_WORDS")
    progress(0.7, message="writing subtitles.srt")
    prefix = doc.get("text_before", "").strip()
    with open(os.path.join(ctx.workdir, OUTPUT), "w", encoding="utf-8") as f:
        f.write(render(cues, prefix + " " if prefix else ""))
    duration = round(cues[-1][1] - cues[0][0], 3)
    ctx.artifact(OUTPUT, OUTPUT, "subtitle", format="srt", cues=len(cues),
                 max_words=MAX_WORDS, max_seconds=MAX_SECONDS)
    progress.done("done")
    return {
        "subtitles": OUTPUT,
        "cues": len(cues),
        "words": sum(len(c[2]) for c in cues),
        "first_cue_start": cues[0][0],
        "last_cue_end": cues[-1][1],
        "span_seconds": duration,
    }


if __name__ == "__main__":
    Module("srt", sl.VERSION).run(handle)
