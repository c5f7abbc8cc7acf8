"""The speech-demo modules (contrib/modules/speech) driven as the daemon
drives them: each runs as its own process with the daemon's environment and
the task's workdir as its cwd, speaks the worker protocol over its pipes
(hello, then a task frame, then frames until result or error, then exit 0),
and gets its inputs staged the way the daemon stages them: the job's
input.json plus, for each stage it needs, that stage's output.json and the
files it declared as outputs.

The chain tts -> normalize -> {align, transcribe, audio-stats} ->
subtitles, report runs once on a real sentence; the tests then check what
each stage produced and how it spoke the protocol. The frame codec is a
small msgpack encoder/decoder of our own, so the test does not share a
bug with the SDK. Skipped when espeak-ng, sox or pocketsphinx (with its
en-us model) are not installed: contrib/deps installs them."""

import json
import os
import queue
import re
import shutil
import struct
import subprocess
import threading
import time
import uuid
import wave

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = os.path.join(ROOT, "contrib", "modules", "speech")
MODEL_DIR = "/usr/share/pocketsphinx/model/en-us"
SENTENCE = ("The quick brown fox jumps over the lazy dog. "
            "Stageline runs every stage in its own module.")


def _missing():
    miss = [t for t in ("espeak-ng", "sox", "pocketsphinx_continuous") if shutil.which(t) is None]
    if not os.path.exists(os.path.join(MODEL_DIR, "cmudict-en-us.dict")):
        miss.append("pocketsphinx-en-us (" + MODEL_DIR + ")")
    return miss


pytestmark = pytest.mark.skipif(bool(_missing()),
                                reason="speech tools not installed: " + ", ".join(_missing())
                                + " (contrib/deps installs them)")


# --------------------------------------------------------------------------
# msgpack, as much of it as the protocol uses


def mp_encode(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v >= 0:
            for code, fmt, lim in ((0xcc, ">B", 1 << 8), (0xcd, ">H", 1 << 16),
                                   (0xce, ">I", 1 << 32), (0xcf, ">Q", 1 << 64)):
                if v < lim:
                    return bytes([code]) + struct.pack(fmt, v)
        for code, fmt, lim in ((0xd0, ">b", 1 << 7), (0xd1, ">h", 1 << 15),
                               (0xd2, ">i", 1 << 31), (0xd3, ">q", 1 << 63)):
            if -lim <= v:
                return bytes([code]) + struct.pack(fmt, v)
        raise ValueError(f"integer {v} does not fit")
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        n = len(b)
        if n < 32:
            head = bytes([0xa0 | n])
        elif n < 1 << 8:
            head = b"\xd9" + struct.pack(">B", n)
        elif n < 1 << 16:
            head = b"\xda" + struct.pack(">H", n)
        else:
            head = b"\xdb" + struct.pack(">I", n)
        return head + b
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else (
            b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(mp_encode(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else (
            b"\xde" + struct.pack(">H", n) if n < 1 << 16 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(mp_encode(k) + mp_encode(x) for k, x in v.items())
    raise TypeError(f"cannot encode {type(v).__name__}")


def mp_decode(b, i=0):
    """(value, next offset). Refuses bin and ext: the protocol has none."""
    c = b[i]
    i += 1
    if c < 0x80:
        return c, i
    if c >= 0xe0:
        return c - 0x100, i
    if 0x80 <= c <= 0x8f or c in (0xde, 0xdf):
        n, i = (c & 0x0f, i) if c <= 0x8f else (
            (struct.unpack_from(">H", b, i)[0], i + 2) if c == 0xde
            else (struct.unpack_from(">I", b, i)[0], i + 4))
        d = {}
        for _ in range(n):
            k, i = mp_decode(b, i)
            assert isinstance(k, str), f"map key {k!r} is not a string"
            d[k], i = mp_decode(b, i)
        return d, i
    if 0x90 <= c <= 0x9f or c in (0xdc, 0xdd):
        n, i = (c & 0x0f, i) if c <= 0x9f else (
            (struct.unpack_from(">H", b, i)[0], i + 2) if c == 0xdc
            else (struct.unpack_from(">I", b, i)[0], i + 4))
        out = []
        for _ in range(n):
            x, i = mp_decode(b, i)
            out.append(x)
        return out, i
    if 0xa0 <= c <= 0xbf or c in (0xd9, 0xda, 0xdb):
        if c <= 0xbf:
            n = c & 0x1f
        else:
            size = {0xd9: 1, 0xda: 2, 0xdb: 4}[c]
            n = int.from_bytes(b[i:i + size], "big")
            i += size
        return b[i:i + n].decode("utf-8"), i + n
    fixed = {0xc0: None, 0xc2: False, 0xc3: True}
    if c in fixed:
        return fixed[c], i
    nums = {0xca: ">f", 0xcb: ">d", 0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
            0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q"}
    if c in nums:
        fmt = nums[c]
        return struct.unpack_from(fmt, b, i)[0], i + struct.calcsize(fmt)
    raise AssertionError(f"msgpack type 0x{c:02x} (bin, ext or reserved) is not allowed")


def frame_bytes(frame):
    payload = mp_encode(frame)
    return struct.pack(">I", len(payload)) + payload


def read_frames(stream, q):
    """Reader thread: every frame from stream into q, then None at EOF (or
    the exception that broke the stream)."""
    try:
        while True:
            head = stream.read(4)
            if not head:
                break
            assert len(head) == 4, "stream ended inside a frame header"
            (n,) = struct.unpack(">I", head)
            payload = stream.read(n)
            assert len(payload) == n, "stream ended inside a frame"
            frame, end = mp_decode(payload)
            assert end == n, "trailing bytes after the frame's map"
            assert isinstance(frame, dict) and isinstance(frame.get("t"), str), frame
            q.put(frame)
        q.put(None)
    except Exception as e:  # noqa: BLE001 - handed to the test thread
        q.put(e)


# --------------------------------------------------------------------------
# Playing the daemon


class Run:
    """One module run: every frame it sent, its answer, exit status, stderr."""

    def __init__(self, stage, workdir):
        self.stage, self.workdir = stage, workdir
        self.frames, self.answer, self.status, self.stderr = [], None, None, ""
        self.seconds = 0.0
        self.inputs = []

    def of(self, t):
        return [f for f in self.frames if f["t"] == t]

    @property
    def hello(self):
        return self.frames[0]

    @property
    def output(self):
        assert self.answer["t"] == "result", f"{self.stage}: {self.answer}\n{self.stderr}"
        return self.answer["output"]

    def artifacts(self, role=None):
        return {a["path"]: a for a in self.of("artifact")
                if role is None or a.get("role", "output") == role}

    def path(self, rel):
        return os.path.join(self.workdir, rel)


def stage_inputs(base, job_input, deps):
    """Writes the job input and each dependency's output.json and output
    files under base/inputs, as the daemon fetches them; returns the task's
    `inputs`."""
    indir = os.path.join(base, "inputs")
    os.makedirs(indir, exist_ok=True)
    inputs = []

    def add(name, type_, path, fmt):
        inputs.append({"name": name, "type": type_, "path": path,
                       "size_bytes": os.path.getsize(path), "format": fmt})

    p = os.path.join(indir, "input.json")
    with open(p, "w") as f:
        json.dump(job_input, f)
    add("input.json", "job-input", p, "json")
    for dep in deps:
        ddir = os.path.join(indir, dep.stage)
        os.makedirs(ddir, exist_ok=True)
        p = os.path.join(ddir, "output.json")
        with open(p, "w") as f:
            json.dump(dep.output, f)
        add(f"{dep.stage}.output", "stage-output", p, "json")
        for rel, a in dep.artifacts(role="output").items():
            dst = os.path.join(ddir, rel)
            shutil.copyfile(dep.path(rel), dst)
            add(a["name"], a["type"], dst, a.get("format"))
    return inputs


def run_module(script, workdir, stage, inputs, params=None, timeout=30.0, cancel_when=None):
    """Runs one module for one task. cancel_when(frame): send the task's
    cancel after the first frame for which it is true."""
    run = Run(stage, workdir)
    run.inputs = inputs
    task_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
           "STAGELINE_JOB_ID": job_id, "STAGELINE_TASK_ID": task_id, "STAGELINE_STAGE": stage,
           "STAGELINE_ATTEMPT": "1", "STAGELINE_WORKDIR": workdir,
           "STAGELINE_REQUEST_ID": "test-speech", "STAGELINE_PROTOCOL": "1"}
    errpath = os.path.join(os.path.dirname(workdir), f"{stage}.stderr")
    t0 = time.monotonic()
    with open(errpath, "wb") as err:
        # The command as the config gives it: the script itself (shebang).
        proc = subprocess.Popen([os.path.join(MODULES, script)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, cwd=workdir, env=env,
                                start_new_session=True)
    q = queue.Queue()
    threading.Thread(target=read_frames, args=(proc.stdout, q), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        hello = q.get(timeout=10)
        assert isinstance(hello, dict) and hello["t"] == "hello", hello
        run.frames.append(hello)
        proc.stdin.write(frame_bytes({
            "t": "task", "task_id": task_id, "job_id": job_id, "stage": stage, "attempt": 1,
            "params": params or {}, "inputs": inputs, "workdir": workdir,
            "deadline": int((time.time() + timeout) * 1000), "request_id": "test-speech"}))
        proc.stdin.flush()
        while True:
            f = q.get(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(f, Exception):
                raise f
            assert f is not None, f"{stage}: the module closed stdout without an answer"
            run.frames.append(f)
            if cancel_when is not None and cancel_when(f):
                cancel_when = None
                proc.stdin.write(frame_bytes({"t": "cancel", "task_id": task_id,
                                              "reason": "job_cancelled"}))
                proc.stdin.flush()
            if f["t"] in ("result", "error"):
                run.answer = f
                break
        run.status = proc.wait(timeout=10)
        rest = q.get(timeout=5)
        assert rest is None, f"{stage}: a frame after the answer: {rest}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        proc.stdin.close()
        run.seconds = time.monotonic() - t0
        with open(errpath, encoding="utf-8", errors="replace") as f:
            run.stderr = f.read()
    return run


class Chain:
    """Runs stages in order, each in its own workdir under base."""

    def __init__(self, base, job_input):
        self.base, self.job_input = base, job_input
        self.runs = {}
        self.n = 0

    def stage(self, name, script, needs=(), params=None, **kw):
        self.n += 1
        sdir = os.path.join(self.base, f"{self.n:02d}_{name}")
        workdir = os.path.join(sdir, "work")
        os.makedirs(workdir)
        inputs = stage_inputs(workdir, self.job_input, [self.runs[d] for d in needs])
        run = run_module(script, workdir, name, inputs, params, **kw)
        self.runs[name] = run
        return run


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    c = Chain(str(tmp_path_factory.mktemp("speech")), {"text": SENTENCE})
    t0 = time.monotonic()
    c.stage("tts", "tts.py", params={"voice": "en-us", "speed": 150})
    c.stage("normalize", "normalize.py", ["tts"])
    c.stage("align", "align.py", ["normalize"])
    c.stage("transcribe", "transcribe.py", ["normalize"])
    c.stage("audio-stats", "audio_stats.py", ["normalize"])
    c.stage("subtitles", "subtitles.py", ["align"])
    c.stage("report", "report.py", ["align", "transcribe", "audio-stats"])
    c.seconds = time.monotonic() - t0
    print(f"\nspeech chain: {c.seconds:.2f}s: "
          + ", ".join(f"{k} {r.seconds:.2f}s" for k, r in c.runs.items()))
    return c


# --------------------------------------------------------------------------
# Each stage's product


def test_tts_writes_a_wav(chain):
    run = chain.runs["tts"]
    out = run.output
    assert out["audio"] == "speech.wav" and out["voice"] == "en-us" and out["speed"] == 150
    with open(run.path("speech.wav"), "rb") as f:
        head = f.read(12)
    assert head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    art = run.artifacts()["speech.wav"]
    assert (art["name"], art["type"], art["format"], art["role"]) == \
        ("speech.wav", "audio", "wav", "output")
    assert 3.0 < out["duration_seconds"] < 15.0


def test_normalize_gives_16k_mono(chain):
    run = chain.runs["normalize"]
    out = run.output
    with wave.open(run.path("audio16k.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        seconds = w.getnframes() / w.getframerate()
    assert (out["sample_rate"], out["channels"]) == (16000, 1)
    assert out["duration_seconds"] == pytest.approx(seconds, abs=0.01)
    assert out["duration_seconds"] == pytest.approx(chain.runs["tts"].output["duration_seconds"],
                                                    abs=0.05)
    assert run.artifacts()["audio16k.wav"]["type"] == "audio"


def test_normalize_is_repeatable(tmp_path, chain):
    # sox dithers with a random seed unless run with -R; the transcript
    # would change from run to run.
    run = one_stage(tmp_path, "normalize.py", "normalize", {"text": SENTENCE},
                    deps=[chain.runs["tts"]])
    with open(run.path("audio16k.wav"), "rb") as a, \
            open(chain.runs["normalize"].path("audio16k.wav"), "rb") as b:
        assert a.read() == b.read()


def test_align_covers_the_text_with_increasing_times(chain):
    run = chain.runs["align"]
    out = run.output
    assert out["coverage"] >= 0.8, out
    assert out["words_aligned"] / out["words_total"] == pytest.approx(out["coverage"], abs=1e-3)
    with open(run.path("alignment.json")) as f:
        doc = json.load(f)
    timed = [w for w in doc["words"] if w["start"] is not None]
    assert len(timed) == out["words_aligned"] >= 0.8 * len(SENTENCE.split())
    prev_end = -1.0
    for w in timed:
        assert w["start"] < w["end"], w
        assert w["start"] >= prev_end, (w, prev_end)
        prev_end = w["end"]
    assert prev_end <= chain.runs["normalize"].output["duration_seconds"] + 0.05
    # "Stageline" is not in the en-us dictionary: dropped, and said so.
    assert out["dropped_words"] == ["Stageline"]
    warnings = run.of("warning")
    assert any("Stageline" in w["message"] and w["detail"]["words"] == ["Stageline"]
               for w in warnings), warnings
    g = run.artifacts()["grammar.jsgf"]
    assert g["role"] == "intermediate" and g["retained"] is True
    assert g["reason"] == "the grammar the alignment used"
    with open(run.path("grammar.jsgf")) as f:
        grammar = f.read()
    assert grammar.startswith("#JSGF V1.0;") and "the quick brown fox" in grammar
    assert run.artifacts()["alignment.json"]["role"] == "output"


def test_transcribe_writes_a_transcript(chain):
    run = chain.runs["transcribe"]
    out = run.output
    assert isinstance(out["hypothesis"], str)
    with open(run.path("transcript.txt"), encoding="utf-8") as f:
        assert f.read().split() == out["hypothesis"].split()
    with open(run.path("transcript.json")) as f:
        doc = json.load(f)
    assert doc["hypothesis"] == out["hypothesis"]
    for u in doc["utterances"]:
        for w in u["words"]:
            assert 0 <= w["start"] <= w["end"]
    assert set(run.artifacts()) == {"transcript.txt", "transcript.json"}


def test_audio_stats_parses_sox(chain):
    run = chain.runs["audio-stats"]
    out = run.output
    with open(run.path("stats.json")) as f:
        doc = json.load(f)
    o = doc["overall"]
    for k in ("rms_level_db", "peak_level_db", "dc_offset", "length_seconds", "crest_factor"):
        assert isinstance(o[k], (int, float)), (k, o)
    assert o["rms_level_db"] < o["peak_level_db"] <= 0
    assert o["length_seconds"] == pytest.approx(chain.runs["normalize"].output["duration_seconds"],
                                                abs=0.01)
    assert out["rms_level_db"] == o["rms_level_db"] and out["samples"] == doc["samples"]


SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"


def srt_seconds(h, m, s, ms):
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_subtitles_parse(chain):
    run = chain.runs["subtitles"]
    with open(run.path("subtitles.srt"), encoding="utf-8") as f:
        blocks = f.read().strip().split("\n\n")
    assert len(blocks) == run.output["cues"] >= 2
    prev_end, words = -1.0, []
    for n, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(n), block
        m = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, lines[1])
        assert m, block
        start, end = srt_seconds(*m.groups()[:4]), srt_seconds(*m.groups()[4:])
        assert prev_end <= start < end, block
        prev_end = end
        text = " ".join(lines[2:]).strip()
        cue_words = text.split()
        assert 1 <= len(cue_words) <= 7, block
        assert end - start <= 3.0 + 1e-6 or len(cue_words) == 1, block
        words += cue_words
    # Every word of the text, in order, the untimed "Stageline" included.
    assert " ".join(words) == SENTENCE
    a = run.artifacts()["subtitles.srt"]
    assert (a["type"], a["format"]) == ("subtitle", "srt")


def test_report_has_coverage_wer_and_stats(chain):
    run = chain.runs["report"]
    with open(run.path("report.json")) as f:
        rep = json.load(f)
    assert rep["alignment"]["coverage"] == chain.runs["align"].output["coverage"]
    t = rep["transcription"]
    assert t["available"] and isinstance(t["wer"], float) and t["wer"] >= 0
    assert t["reference_words"] == 17
    assert t["substitutions"] + t["deletions"] + t["correct"] == 17
    assert t["wer"] == pytest.approx(
        (t["substitutions"] + t["deletions"] + t["insertions"]) / 17, abs=1e-3)
    if t["wer"] > 0.3:
        assert "synthetic" in t["note"] and rep["notes"]
    assert rep["audio"]["rms_level_db"] == chain.runs["audio-stats"].output["rms_level_db"]
    assert run.output["sections_missing"] == []
    assert run.artifacts()["report.json"]["format"] == "json"


# --------------------------------------------------------------------------
# How every stage spoke the protocol


def test_every_stage_speaks_the_protocol(chain):
    names = {"tts": "tts", "normalize": "sox", "align": "align", "transcribe": "asr",
             "audio-stats": "stats", "subtitles": "srt", "report": "report"}
    for stage, run in chain.runs.items():
        h = run.hello
        assert (h["protocol"], h["module"], h["persistent"]) == (1, names[stage], False), h
        assert run.status == 0, f"{stage} exited {run.status}\n{run.stderr}"
        assert run.answer["t"] == "result", f"{stage}: {run.answer}\n{run.stderr}"
        assert [f["t"] for f in run.frames].count("hello") == 1
        fractions = [p["fraction"] for p in run.of("progress")]
        assert len(fractions) >= 2, f"{stage}: progress {fractions}"
        assert all(0.0 <= x <= 1.0 for x in fractions), fractions
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
        for p in run.of("progress"):
            for k in ("current", "total"):
                assert k not in p or isinstance(p[k], int)
        # Every file the module left in its workdir is declared, and every
        # declared file exists.
        declared = run.artifacts()
        for rel, a in declared.items():
            assert not rel.startswith("/") and ".." not in rel.split("/")
            assert os.path.isfile(run.path(rel)), (stage, rel)
            if a.get("role") == "intermediate":
                assert a.get("reason"), a
        found = set()
        for d, dirs, files in os.walk(run.workdir):
            if d == run.workdir:
                dirs[:] = [x for x in dirs if x != "inputs"]
            found |= {os.path.relpath(os.path.join(d, f), run.workdir) for f in files}
        assert found == set(declared), f"{stage}: undeclared {found - set(declared)}"


def test_the_chain_is_quick(chain):
    assert chain.seconds < 30, chain.seconds


# --------------------------------------------------------------------------
# Input errors, optional inputs, cancel


def one_stage(tmp_path, script, stage, job_input, params=None, deps=(), **kw):
    workdir = os.path.join(str(tmp_path), stage, "work")
    os.makedirs(workdir)
    return run_module(script, workdir, stage, stage_inputs(workdir, job_input, deps), params,
                      **kw)


@pytest.mark.parametrize("job_input,params,code", [
    ({"text": "   "}, {}, "EMPTY_TEXT"),
    ({"text": "?!"}, {}, "EMPTY_TEXT"),
    ({}, {}, "MISSING_TEXT"),
    ({"text": 42}, {}, "BAD_TEXT"),
    ({"text": "hello"}, {"speed": "fast"}, "BAD_SPEED"),
    ({"text": "hello"}, {"voice": "zz"}, "UNKNOWN_VOICE"),
])
def test_tts_input_errors(tmp_path, job_input, params, code):
    run = one_stage(tmp_path, "tts.py", "tts", job_input, params)
    assert run.answer["t"] == "error", run.answer
    assert (run.answer["category"], run.answer["code"], run.answer["retryable"]) == \
        ("input", code, False)
    assert run.status == 0
    assert not run.of("artifact")


def test_align_spells_small_numbers_and_drops_the_rest(tmp_path):
    c = Chain(str(tmp_path), {"text": "In 1999 we had 42 apples, and 7 pears; it's well-known."})
    c.stage("tts", "tts.py")
    c.stage("normalize", "normalize.py", ["tts"])
    run = c.stage("align", "align.py", ["normalize"])
    assert run.output["dropped_words"] == ["1999"]
    assert [w["detail"]["words"] for w in run.of("warning")] == [["1999"]]
    with open(run.path("alignment.json")) as f:
        words = {w["word"]: w for w in json.load(f)["words"]}
    assert words["42"]["spoken"] == ["forty", "two"] and words["42"]["start"] is not None
    assert words["7"]["spoken"] == ["seven"] and words["it's"]["start"] is not None
    assert words["well"]["text_after"] == "-" and words["1999"]["start"] is None
    assert words["we"]["start"] < words["42"]["start"] < words["pears"]["start"]


def test_report_without_the_optional_stages(tmp_path, chain):
    run = one_stage(tmp_path, "report.py", "report", {"text": SENTENCE},
                    deps=[chain.runs["align"]])
    out = run.output
    assert out["sections_missing"] == ["transcription", "audio"]
    assert out["coverage"] == chain.runs["align"].output["coverage"] and out["wer"] is None
    assert len(run.of("warning")) == 2


def test_cancel_stops_the_decoder(tmp_path, chain):
    run = one_stage(tmp_path, "transcribe.py", "transcribe", {"text": SENTENCE},
                    deps=[chain.runs["normalize"]],
                    cancel_when=lambda f: f.get("message") == "transcribing")
    assert run.answer["t"] == "error" and run.answer["category"] == "cancelled", run.answer
    assert run.answer["retryable"] is False and run.status == 0
    assert not run.of("result") and not run.of("artifact")
    # The decoder needs over a second for this audio; the cancel stopped it.
    assert run.seconds < chain.runs["transcribe"].seconds, (run.seconds,
                                                            chain.runs["transcribe"].seconds)
