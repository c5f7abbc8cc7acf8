#!/usr/bin/python3
"""wordcount: the example module of docs/modules.md, in Python.

Counts the lines, words and bytes of the job input's "text", writes them to
counts.json (an output artifact) and answers with them. A text with fewer
words than params.min_words gets a warning. Needs stageline_module on the
Python path (PYTHONPATH=contrib/sdk/python).
"""
import json

from stageline_module import Module, ModuleError

module = Module("wordcount", "1.0")


@module.task
def wordcount(ctx):
    text = ctx.job_input().get("text")
    if not isinstance(text, str):
        raise ModuleError("the job input needs a string 'text'", code="NO_TEXT",
                          category="input")
    data = text.encode()
    lines = data.split(b"\n")
    words = 0
    for i, line in enumerate(lines):
        words += len(line.split())
        if i % 1000 == 999:
            ctx.progress(i / len(lines), f"{i + 1} lines")
            ctx.check_cancelled()
    counts = {"lines": data.count(b"\n"), "words": words, "bytes": len(data)}
    with open(ctx.path("counts.json"), "w") as f:
        json.dump(counts, f)
    ctx.artifact("counts", "counts.json", type="metadata", format="json")
    ctx.log("info", "counted", **counts)
    if words < ctx.params.get("min_words", 0):
        ctx.warning("fewer words than expected", words=words)
    return counts


if __name__ == "__main__":
    module.run()
