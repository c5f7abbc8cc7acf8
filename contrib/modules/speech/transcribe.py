#!/usr/bin/python3
"""transcribe: free speech recognition of normalize's audio16k.wav with
pocketsphinx and the general en-US model (acoustic model, trigram language
model, CMU dictionary), into transcript.txt and transcript.json.

It does not see the text, so it measures what the recognizer hears. On
espeak-ng's synthetic voice that is not much: the acoustic model was
trained on human speech, and the report stage says so next to the word
error rate. Progress is the share of the audio fed to the decoder.
"""

import os
import re

import speechlib as sl
from speechlib import Module

TEXT_OUT = "transcript.txt"
JSON_OUT = "transcript.json"
TIME_LINE = re.compile(r"^(\S+) (-?\d+\.\d+) (-?\d+\.\d+) (\S+)$")


def decoder_argv():
    return ["pocketsphinx_continuous", "-infile", "/dev/stdin", "-hmm", sl.HMM_DIR,
            "-lm", sl.LM_FILE, "-dict", sl.DICT_FILE, "-time", "yes"]


def parse(lines):
    """Utterances from -time output: a hypothesis line, then one line per
    segment ("word start end confidence"), fillers included."""
    utterances = []
    for line in lines:
        m = TIME_LINE.match(line.strip())
        if m is None:  # a hypothesis (possibly empty) starts an utterance
            utterances.append({"text": line.strip(), "segments": []})
            continue
        if not utterances:
            utterances.append({"text": "", "segments": []})
        utterances[-1]["segments"].append({
            "word": m.group(1), "start": float(m.group(2)), "end": float(m.group(3)),
            "confidence": round(float(m.group(4)), 6)})
    out = []
    for u in utterances:
        words = [dict(s, word=re.sub(r"\(\d+\)$", "", s["word"])) for s in u["segments"]
                 if not s["word"].startswith(("<", "["))]
        if not u["text"] and not words:
            continue
        segs = u["segments"]
        out.append({"text": u["text"], "start": segs[0]["start"] if segs else None,
                    "end": segs[-1]["end"] if segs else None, "words": words})
    return out


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="finding the audio")
    audio = sl.stage_file(ctx, "normalize", "audio", type="audio", format="wav")
    if audio is None:
        raise sl.input_error("no audio among the inputs (expected normalize's audio16k.wav)",
                             "NO_AUDIO")
    info = sl.wav_info(audio.path)
    if (info["sample_rate"], info["channels"], info["bits_per_sample"]) != (16000, 1, 16):
        raise sl.input_error("the audio must be 16 kHz mono 16-bit (normalize's output)",
                             "BAD_AUDIO_FORMAT", **info)
    ctx.log("info", "transcribing", duration_seconds=info["duration_seconds"],
            model=sl.HMM_DIR, lm=sl.LM_FILE)

    progress.phase(0.02, 0.97)
    tool = sl.Tool(ctx, decoder_argv(), feed=True, on_stderr_piece=sl.sphinx_quiet)
    tool.feed_pcm(audio.path, lambda done, total: progress(
        done / total, message="transcribing", current=done, total=total))
    rc = tool.wait()
    progress.phase(0.0, 1.0)
    if rc != 0:
        raise sl.ModuleError(f"pocketsphinx_continuous failed (exit {rc})", code="DECODER_FAILED",
                             exit_code=rc, stderr=tool.stderr_text()[-5:])
    utterances = parse(tool.stdout_lines)
    hypothesis = " ".join(u["text"] for u in utterances if u["text"]).strip()
    words = sum(len(u["words"]) for u in utterances)
    if not hypothesis:
        ctx.warning("the recognizer heard no words")

    with open(os.path.join(ctx.workdir, TEXT_OUT), "w", encoding="utf-8") as f:
        f.write("\n".join(u["text"] for u in utterances if u["text"]) + "\n")
    sl.write_json(os.path.join(ctx.workdir, JSON_OUT), {
        "hypothesis": hypothesis,
        "duration_seconds": info["duration_seconds"],
        "decoder": {"program": "pocketsphinx_continuous", "model": sl.HMM_DIR,
                    "language_model": sl.LM_FILE, "dictionary": sl.DICT_FILE},
        "utterances": utterances,
    })
    ctx.artifact(TEXT_OUT, TEXT_OUT, "transcript", format="txt", words=words)
    ctx.artifact(JSON_OUT, JSON_OUT, "transcript", format="json", words=words,
                 utterances=len(utterances))
    progress.done("done")
    return {
        "hypothesis": hypothesis,
        "words": words,
        "utterances": len(utterances),
        "transcript": TEXT_OUT,
        "transcript_json": JSON_OUT,
        "model": "pocketsphinx en-us (general acoustic model, en-us.lm.bin, cmudict-en-us)",
    }


if __name__ == "__main__":
    Module("asr", sl.VERSION).run(handle)
