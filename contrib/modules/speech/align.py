#!/usr/bin/python3
"""align: forced alignment of the job's text to normalize's audio16k.wav.

The text becomes a one-sentence JSGF grammar (grammar.jsgf, kept as an
intermediate file) that pocketsphinx_continuous must follow through the whole
recording, so the word timings it prints (-time yes) are the alignment.
Words the en-us pronunciation dictionary does not have cannot be in the
grammar: they are dropped, listed in a warning, and kept in alignment.json
without times so the subtitles still show them. Small integers are spoken as
words ("42" -> "forty two"), as espeak-ng says them.

Progress is the share of the samples written to the decoder's stdin: the pipe
is small, so that is what it has decoded, give or take a fraction of a
second. The beams are wider than the defaults: the search space of a linear
grammar is tiny, and the default beams can prune the only path on synthetic
speech ("Final result does not match the grammar").
"""

import difflib
import os
import re

import speechlib as sl
from speechlib import Module

GRAMMAR = "grammar.jsgf"
OUTPUT = "alignment.json"
BEAMS = ["-beam", "1e-80", "-pbeam", "1e-80", "-wbeam", "1e-60"]
TIME_LINE = re.compile(r"^(\S+) (-?\d+\.\d+) (-?\d+\.\d+) (\S+)$")


def decoder_argv(grammar):
    # -infile /dev/stdin: we feed the samples ourselves, for progress and
    # cancel (raw: the decoder skips a WAV header only for a *.wav name).
    # -remove_silence no: with the voice-activity detector on, a long pause
    # splits the audio into utterances, each of which would have to match the
    # whole grammar.
    return ["pocketsphinx_continuous", "-infile", "/dev/stdin", "-jsgf", grammar,
            "-dict", sl.DICT_FILE, "-hmm", sl.HMM_DIR, "-time", "yes",
            "-remove_silence", "no", *BEAMS]


def parse_times(lines):
    """pocketsphinx's -time lines ("word start end confidence"), fillers
    (<sil>, <s>, [NOISE]) left out and pronunciation variants folded."""
    words = []
    for line in lines:
        m = TIME_LINE.match(line.strip())
        if m is None:
            continue
        w = m.group(1)
        if w.startswith("<") or w.startswith("["):
            continue
        words.append((re.sub(r"\(\d+\)$", "", w), float(m.group(2)), float(m.group(3)),
                      float(m.group(4))))
    return words


def handle(ctx):
    progress = sl.Progress(ctx)
    progress(0.0, message="reading the text and the audio")
    text = sl.job_text(ctx)
    audio = sl.stage_file(ctx, "normalize", "audio", type="audio", format="wav")
    if audio is None:
        raise sl.input_error("no audio among the inputs (expected normalize's audio16k.wav)",
                             "NO_AUDIO")
    info = sl.wav_info(audio.path)
    if (info["sample_rate"], info["channels"], info["bits_per_sample"]) != (16000, 1, 16):
        raise sl.input_error("the audio must be 16 kHz mono 16-bit (normalize's output)",
                             "BAD_AUDIO_FORMAT", **info)

    progress(0.02, message="loading the dictionary")
    dictionary = sl.load_dictionary()
    tokens = sl.tokenize(text)
    entries, grammar_words, owner, dropped = [], [], [], []
    for i, (tok, start, end) in enumerate(tokens):
        spoken = sl.spoken(tok)
        known = all(w in dictionary for w in spoken)
        after_end = tokens[i + 1][1] if i + 1 < len(tokens) else len(text)
        entries.append({"index": i, "word": tok, "spoken": spoken, "in_dictionary": known,
                        "text_after": text[end:after_end], "start": None, "end": None})
        if known:
            grammar_words += spoken
            owner += [i] * len(spoken)
        else:
            dropped.append(tok)
    leading = text[:tokens[0][1]] if tokens else ""
    if dropped:
        unique = sorted(set(dropped), key=dropped.index)
        ctx.warning(f"{len(dropped)} of {len(tokens)} words are not in the pronunciation "
                    f"dictionary and were not aligned: {', '.join(unique)}",
                    words=unique, dropped=len(dropped), total=len(tokens))
    if not grammar_words:
        raise sl.input_error("none of the words of the text is in the pronunciation dictionary",
                             "NO_ALIGNABLE_WORDS", words=dropped[:100])

    with open(os.path.join(ctx.workdir, GRAMMAR), "w", encoding="utf-8") as f:
        f.write("#JSGF V1.0;\n\ngrammar forced;\n\npublic <utterance> = "
                + " ".join(grammar_words) + ";\n")
    ctx.artifact(GRAMMAR, GRAMMAR, "grammar", format="jsgf", role="intermediate",
                 retained=True, reason="the grammar the alignment used",
                 words=len(grammar_words))
    ctx.log("info", "aligning", words=len(tokens), grammar_words=len(grammar_words),
            dropped=len(dropped), duration_seconds=info["duration_seconds"])

    progress.phase(0.1, 0.95)
    tool = sl.Tool(ctx, decoder_argv(GRAMMAR), feed=True, on_stderr_piece=sl.sphinx_quiet)
    tool.feed_pcm(audio.path, lambda done, total: progress(
        done / total, message="aligning", current=done, total=total))
    rc = tool.wait()
    progress.phase(0.0, 1.0)
    if rc != 0:
        raise sl.ModuleError(f"pocketsphinx_continuous failed (exit {rc})", code="DECODER_FAILED",
                             exit_code=rc, stderr=tool.stderr_text()[-5:])
    decoded = parse_times(tool.stdout_lines)
    if not decoded:
        # Deterministic: the audio does not fit the text; a retry gives the same.
        raise sl.ModuleError("the decoder found no path through the grammar: the audio does "
                             "not match the text", code="ALIGNMENT_FAILED", retryable=False,
                             stderr=[ln for ln in tool.stderr_text() if "ERROR" in ln][-5:])

    # The decoder follows the grammar, so the sequences match; a matcher
    # keeps a partial result honest should they not.
    times = [None] * len(grammar_words)
    sm = difflib.SequenceMatcher(a=grammar_words, b=[d[0] for d in decoded], autojunk=False)
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            times[blk.a + k] = decoded[blk.b + k]
    for gi, t in enumerate(times):
        if t is None:
            continue
        e = entries[owner[gi]]
        e["start"] = t[1] if e["start"] is None else min(e["start"], t[1])
        e["end"] = t[2] if e["end"] is None else max(e["end"], t[2])
    for gi, t in enumerate(times):
        if t is None:  # a token is aligned only when all its spoken words are
            e = entries[owner[gi]]
            e["start"] = e["end"] = None
    aligned = sum(1 for e in entries if e["start"] is not None)
    coverage = round(aligned / len(entries), 4)
    if aligned < len(entries) - len(dropped):
        ctx.warning(f"the decoder returned times for {aligned} of "
                    f"{len(entries) - len(dropped)} dictionary words", aligned=aligned)

    doc = {
        "text": text,
        "text_before": leading,
        "duration_seconds": info["duration_seconds"],
        "words_total": len(entries),
        "words_aligned": aligned,
        "coverage": coverage,
        "dropped": dropped,
        "decoder": {"program": "pocketsphinx_continuous", "model": sl.HMM_DIR,
                    "dictionary": sl.DICT_FILE, "grammar": GRAMMAR},
        "words": entries,
    }
    sl.write_json(os.path.join(ctx.workdir, OUTPUT), doc)
    ctx.artifact(OUTPUT, OUTPUT, "alignment", format="json", words=len(entries),
                 aligned=aligned, coverage=coverage)
    progress.done("done")
    return {
        "alignment": OUTPUT,
        "words_total": len(entries),
        "words_aligned": aligned,
        "coverage": coverage,
        "dropped_words": dropped,
        "duration_seconds": info["duration_seconds"],
    }


if __name__ == "__main__":
    Module("align", sl.VERSION).run(handle)
