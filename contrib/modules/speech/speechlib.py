"""speechlib: what the speech-demo modules share.

The speech-demo pipeline (contrib/pipelines/speech-demo.yaml) runs one module
per stage, each a one-shot program using the Python SDK. This file holds the
parts they have in common: finding the SDK, finding a stage's inputs the way
the daemon hands them over (proto/worker-protocol.md, `task.inputs`), running
an external tool so that a `cancel` stops it and its progress reaches the
daemon, and the text handling (tokens, dictionary words, word error rate)
that align and report must agree on.
"""

import json
import os
import re
import subprocess
import sys
import threading
import wave

_HERE = os.path.dirname(os.path.abspath(__file__))
_SDK = os.path.normpath(os.path.join(_HERE, "..", "..", "sdk", "python"))
if _SDK not in sys.path:
    sys.path.insert(0, _SDK)

from stageline_module import Module, ModuleError  # noqa: E402

__all__ = ["Module", "ModuleError"]  # re-exported for the modules

VERSION = "1.0.0"

# Debian's pocketsphinx-en-us: the CMU Sphinx en-US acoustic model, its
# pronunciation dictionary and the general language model. A module's `env`
# may point SPEECH_MODEL_DIR elsewhere (same file names).
MODEL_DIR = os.environ.get("SPEECH_MODEL_DIR", "/usr/share/pocketsphinx/model/en-us")
HMM_DIR = os.path.join(MODEL_DIR, "en-us")
DICT_FILE = os.path.join(MODEL_DIR, "cmudict-en-us.dict")
LM_FILE = os.path.join(MODEL_DIR, "en-us.lm.bin")


# --------------------------------------------------------------------------
# Errors


def input_error(message, code, **detail):
    """The task's input is bad: never retried."""
    return ModuleError(message, code=code, category="input", **detail)


def check_cancelled(ctx):
    """Raises the SDK's Cancelled once a cancel frame arrived."""
    ctx.check_cancelled()


# --------------------------------------------------------------------------
# Progress


class Progress:
    """Maps a step's own 0..1 onto its slice of the task's progress, never
    going backwards. (The SDK spaces the frames out.)"""

    def __init__(self, ctx):
        self.ctx = ctx
        self.last = -1.0
        self.lo, self.hi = 0.0, 1.0

    def phase(self, lo, hi):
        self.lo, self.hi = lo, hi

    def __call__(self, fraction, message=None, current=None, total=None):
        f = max(self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0), self.last)
        self.last = f
        self.ctx.progress(round(f, 4), message=message, current=current, total=total)

    def done(self, message=None):
        self.phase(0.0, 1.0)
        self(1.0, message=message)


# --------------------------------------------------------------------------
# Inputs


def find_input(ctx, name=None, type=None, format=None):
    """The first input with that name (or whose file is called that), else
    the first of that type/format; None when there is none."""
    inputs = list(ctx.inputs or [])
    if name is not None:
        for i in inputs:
            if i.name == name:
                return i
        for i in inputs:
            if os.path.basename(i.path) == name or i.name.endswith("/" + name):
                return i
    if type is not None or format is not None:
        for i in inputs:
            if (type is None or i.type == type) and (format is None or i.format == format):
                return i
    return None


def read_json_input(inp):
    if hasattr(inp, "read_json"):
        return inp.read_json()
    with open(inp.path, encoding="utf-8") as f:
        return json.load(f)


def stage_output(ctx, stage):
    """A dependency's output.json as a dict, or None when the stage is not
    among the inputs (an optional stage that failed or was skipped)."""
    inp = find_input(ctx, name=stage + ".output")
    if inp is None:
        return None
    try:
        out = read_json_input(inp)
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def stage_file(ctx, stage, key, type=None, format=None):
    """A file a dependency declared as output. Its output.json names the file
    under `key`; fall back to the first input of that type/format."""
    out = stage_output(ctx, stage) or {}
    fname = out.get(key)
    inp = find_input(ctx, name=fname) if isinstance(fname, str) and fname else None
    if inp is None and (type is not None or format is not None):
        inp = find_input(ctx, type=type, format=format)
    return inp


def job_text(ctx):
    """The job input's `text`, stripped; an input error when it is missing,
    not a string, or has nothing to say."""
    inp = find_input(ctx, name="input.json") or find_input(ctx, type="job-input")
    if inp is None:
        # The daemon always sends it: its absence is not the job's fault.
        raise ModuleError("the task has no job input (input.json)", code="NO_JOB_INPUT",
                          category="infra")
    try:
        data = read_json_input(inp)
    except (OSError, ValueError) as e:
        raise input_error(f"the job input is not JSON: {e}", "BAD_JOB_INPUT")
    if not isinstance(data, dict) or "text" not in data or data["text"] is None:
        raise input_error('the job input has no "text"', "MISSING_TEXT")
    text = data["text"]
    if not isinstance(text, str):
        raise input_error('the job input\'s "text" must be a string', "BAD_TEXT",
                          got=type(text).__name__)
    text = text.strip()
    if not tokenize(text):
        raise input_error('the job input\'s "text" is empty: nothing to say', "EMPTY_TEXT")
    return text


def wav_info(path):
    """Format and length of a PCM WAV file; an input error when it is not one."""
    try:
        with wave.open(path, "rb") as w:
            rate, frames = w.getframerate(), w.getnframes()
            return {
                "sample_rate": rate,
                "channels": w.getnchannels(),
                "bits_per_sample": 8 * w.getsampwidth(),
                "samples": frames,
                "duration_seconds": round(frames / rate, 3) if rate else 0.0,
            }
    except (wave.Error, EOFError) as e:
        raise input_error(f"{os.path.basename(path)} is not a PCM WAV file: {e}", "BAD_AUDIO")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------
# Running tools


def _forward_stderr(stream, on_progress=None, keep=None):
    """Copy a tool's stderr to ours (it lands in stage.log), keeping the last
    lines in `keep`; pieces on_progress takes (sox's '\\r' updates) are not
    copied."""
    def emit(text):
        sys.stderr.write(text + "\n")
        if keep is not None:
            keep.append(text)
            del keep[:-50]

    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        while True:
            m = re.search(rb"[\r\n]", buf)
            if m is None:
                break
            piece, sep, buf = buf[:m.start()], buf[m.start():m.end()], buf[m.end():]
            if on_progress is not None and on_progress(piece.decode("utf-8", "replace")):
                continue
            if sep == b"\n" or piece.strip():
                emit(piece.decode("utf-8", "replace"))
    if buf.strip():
        emit(buf.decode("utf-8", "replace"))
    sys.stderr.flush()


def _kill(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class Tool:
    """One run of an external program. Its stdin and stdout never inherit
    ours (ours carry the frames); stderr goes to the stage log."""

    def __init__(self, ctx, argv, *, feed=False, on_stdout_line=None, on_stderr_piece=None,
                 env=None):
        self.ctx, self.argv = ctx, argv
        self.stdout_lines = []
        self.stderr_lines = []
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ctx.workdir,
            env=dict(os.environ, **env) if env else None)
        self._on_line = on_stdout_line
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=_forward_stderr, daemon=True,
                             args=(self.proc.stderr, on_stderr_piece, self.stderr_lines)),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            if self._on_line is not None:
                self._on_line(line)

    def stderr_text(self):
        """The last lines the tool wrote to stderr (valid after wait())."""
        return list(self.stderr_lines)

    def feed_pcm(self, path, on_fed, frames_per_chunk=16384):
        """Write a WAV file's samples, without its header, to the tool's
        stdin (pocketsphinx_continuous skips a WAV header only when the file
        name ends in .wav, so from a pipe it must get raw samples), calling
        on_fed(bytes_done, bytes_total) after each chunk: the pipe is small,
        so what has been written is what the tool has (nearly) consumed."""
        try:
            with wave.open(path, "rb") as w:
                total = w.getnframes() * w.getsampwidth() * w.getnchannels()
                done = 0
                while True:
                    check_cancelled(self.ctx)
                    data = w.readframes(frames_per_chunk)
                    if not data:
                        break
                    self.proc.stdin.write(data)
                    done += len(data)
                    on_fed(done, total)
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # the tool exited early; wait() reports how
        except BaseException:
            _kill(self.proc)
            raise

    def wait(self, tick=None, interval=0.05):
        """Wait for the tool, calling tick() while it runs; kill it on cancel."""
        try:
            while True:
                try:
                    rc = self.proc.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    pass
                check_cancelled(self.ctx)
                if tick is not None:
                    tick()
        except BaseException:
            _kill(self.proc)
            raise
        for t in self._threads:
            t.join(timeout=5)
        return rc


def sphinx_quiet(piece):
    """An on_stderr_piece for pocketsphinx: its INFO lines and configuration
    table (some 200 lines a run) stay out of the stage log; warnings and
    errors go in."""
    p = piece.strip()
    return (p.startswith(("INFO:", "-", "[NAME]", "Current configuration"))
            or not p)


def sox_progress(report):
    """An on_stderr_piece for `sox -S`: its 'In:12.3% ...' updates become
    report(fraction)."""
    def piece(text):
        m = re.match(r"\s*In:\s*([0-9.]+)%", text)
        if m is None:
            return False
        try:
            report(float(m.group(1)) / 100.0)
        except ValueError:
            pass
        return True
    return piece


# --------------------------------------------------------------------------
# Words


_TOKEN_RE = re.compile(r"\d+(?:[.,:]\d+)+|[^\W_]+(?:['\u2019][^\W_]+)*")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n):
    """0..999 as espeak-ng's en-us says them ("one hundred twenty")."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])


def tokenize(text):
    """The words of a text, in order: [(token, start, end)] with character
    offsets. Apostrophes inside words stay (it's, dog's); hyphens split."""
    return [(m.group(0), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def spoken(token):
    """The dictionary words a token is spoken as: its lower-case form, or
    the words of a small integer. Larger or decimal numbers stay as they are
    (and are then not found in the dictionary)."""
    t = token.lower().replace("\u2019", "'")
    if t.isdigit() and t.isascii() and (t == "0" or not t.startswith("0")) and int(t) < 1000:
        return number_words(int(t))
    return [t]


def normalized_words(text):
    """A text as the flat list of lower-case words it is spoken as, for the
    word error rate."""
    return [w for tok, _, _ in tokenize(text) for w in spoken(tok)]


def load_dictionary(path=DICT_FILE):
    """The headwords of a Sphinx dictionary ("word(2)" variants folded)."""
    words = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split(None, 1)[0] if line.strip() else ""
            if head:
                words.add(re.sub(r"\(\d+\)$", "", head))
    return words


def word_errors(reference, hypothesis):
    """Levenshtein over words: (substitutions, deletions, insertions, and the
    aligned pairs [(ref or None, hyp or None)])."""
    n, m = len(reference), len(hypothesis)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = 0 if reference[i - 1] == hypothesis[j - 1] else 1
            d[i][j] = min(d[i - 1][j - 1] + cost, d[i - 1][j] + 1, d[i][j - 1] + 1)
    s = dl = ins = 0
    pairs = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            if reference[i - 1] != hypothesis[j - 1]:
                s += 1
            pairs.append((reference[i - 1], hypothesis[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            dl += 1
            pairs.append((reference[i - 1], None))
            i -= 1
        else:
            ins += 1
            pairs.append((None, hypothesis[j - 1]))
            j -= 1
    pairs.reverse()
    return s, dl, ins, pairs


def word_error_rate(reference, hypothesis):
    """(S + D + I) / N over word lists, with the counts; None when the
    reference is empty."""
    s, dl, ins, pairs = word_errors(reference, hypothesis)
    n = len(reference)
    return {
        "wer": round((s + dl + ins) / n, 4) if n else None,
        "reference_words": n,
        "hypothesis_words": len(hypothesis),
        "substitutions": s,
        "deletions": dl,
        "insertions": ins,
        "correct": n - s - dl,
    }
