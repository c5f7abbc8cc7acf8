#!/usr/bin/python3
"""report: the speech-demo's summary (report.json): how much of the text the
forced alignment covered, the word error rate of the free transcription
against the text, and the audio's statistics.

transcribe and audio-stats are optional stages: when one failed or was
skipped its output is simply not among the inputs, and its section says so.
The word error rate is the word-level Levenshtein distance (substitutions +
deletions + insertions) over the number of words in the text, both
normalized the same way (lower case, punctuation dropped, small numbers
spelled out). A high WER on espeak-ng's voice is expected, and the report
says why rather than leaving a bare number.
"""

import os

import speechlib as sl
from speechlib import Module

OUTPUT = "report.json"
HIGH_WER = 0.3


def pct(x):
    return f"{100 * x:.0f}%"


def alignment_section(ctx):
    out = sl.stage_output(ctx, "align")
    if out is None:
        return {"available": False, "reason": "no output from the align stage"}
    sec = {"available": True}
    for k in ("words_total", "words_aligned", "coverage", "dropped_words", "duration_seconds"):
        if k in out:
            sec[k] = out[k]
    return sec


def transcription_section(ctx, text, dropped):
    out = sl.stage_output(ctx, "transcribe")
    if out is None:
        return {"available": False,
                "reason": "no output from the transcribe stage (optional: failed or skipped)"}
    hyp = out.get("hypothesis") if isinstance(out.get("hypothesis"), str) else ""
    ref_words, hyp_words = sl.normalized_words(text), sl.normalized_words(hyp)
    wer = sl.word_error_rate(ref_words, hyp_words)
    sec = {"available": True, "hypothesis": hyp, "reference": " ".join(ref_words), **wer,
           "model": out.get("model")}
    oov = sorted({w for t in dropped for w in sl.spoken(t)})
    if oov:
        sec["out_of_vocabulary"] = oov
    if wer["wer"] is not None and wer["wer"] > HIGH_WER:
        sec["note"] = (
            f"The word error rate is {pct(wer['wer'])}, which is expected here: the free "
            "transcription uses pocketsphinx's general en-US model, trained on human speech, "
            "and espeak-ng's synthetic voice is far from what it knows"
            + (("; the word " + oov[0] + " is" if len(oov) == 1 else
                "; the words " + ", ".join(oov) + " are")
               + " not in its vocabulary and cannot be recognized at all" if oov else "")
            + ". The WER measures that mismatch, not the pipeline. The forced alignment, "
            "which is given the text, is the reliable source of word timings (and of the "
            "subtitles).")
    return sec


def audio_section(ctx):
    out = sl.stage_output(ctx, "audio-stats")
    if out is None:
        return {"available": False,
                "reason": "no output from the audio-stats stage (optional: failed or skipped)"}
    sec = {"available": True}
    for k, v in out.items():
        if k != "stats":
            sec[k] = v
    inp = sl.stage_file(ctx, "audio-stats", "stats", format="json", type="metadata")
    if inp is not None:
        try:
            full = sl.read_json_input(inp)
            if isinstance(full.get("overall"), dict):
                sec["overall"] = full["overall"]
        except (OSError, ValueError):
            pass
    return sec


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="reading the text")
    text = sl.job_text(ctx)
    progress(0.1, message="alignment")
    alignment = alignment_section(ctx)
    progress(0.3, message="word error rate")
    transcription = transcription_section(ctx, text, alignment.get("dropped_words") or [])
    progress(0.7, message="audio statistics")
    audio = audio_section(ctx)

    notes, summary = [], []
    if alignment["available"] and "coverage" in alignment:
        summary.append(f"aligned {alignment.get('words_aligned')} of "
                       f"{alignment.get('words_total')} words ({pct(alignment['coverage'])})")
    if transcription["available"] and transcription.get("wer") is not None:
        summary.append(f"free transcription WER {pct(transcription['wer'])}")
        if "note" in transcription:
            notes.append(transcription["note"])
    for name, sec in (("alignment", alignment), ("transcription", transcription),
                      ("audio", audio)):
        if not sec["available"]:
            notes.append(f"{name}: {sec['reason']}")
            ctx.warning(f"the report has no {name} section: {sec['reason']}", section=name)
    if audio["available"] and audio.get("rms_level_db") is not None:
        summary.append(f"RMS {audio['rms_level_db']} dBFS, peak {audio.get('peak_level_db')} "
                       "dBFS")

    report = {
        "job_id": ctx.job_id,
        "text": text,
        "summary": "; ".join(summary),
        "alignment": alignment,
        "transcription": transcription,
        "audio": audio,
        "notes": notes,
    }
    progress(0.9, message="writing report.json")
    sl.write_json(os.path.join(ctx.workdir, OUTPUT), report)
    ctx.artifact(OUTPUT, OUTPUT, "report", format="json")
    progress.done("done")
    return {
        "report": OUTPUT,
        "summary": report["summary"],
        "coverage": alignment.get("coverage"),
        "wer": transcription.get("wer"),
        "rms_level_db": audio.get("rms_level_db"),
        "sections_missing": [n for n, s in (("alignment", alignment),
                                            ("transcription", transcription),
                                            ("audio", audio)) if not s["available"]],
    }


if __name__ == "__main__":
    Module("report", sl.VERSION).run(handle)
