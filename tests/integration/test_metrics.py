"""Metrics end to end (ARCHITECTURE.md §9, docs/metrics.md): exact counter
deltas over real requests, the Prometheus text exposition (format, names,
units, `promtool check metrics` under load), the JSON shape, route labels
that are templates and never raw paths or secrets, the resource sampler,
the separate metrics listener, server.metrics: false, and the operator
artefacts in contrib/ (alert rules and their unit tests, the Grafana
dashboard) checked against what the daemon really exposes.

promtool comes from build/tools/promtool, which contrib/promtool provides;
the tests that need it are skipped (saying so) when it is missing."""

import http.client
import json
import math
import os
import re
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest

from slhelpers import assert_refused, free_port, http_request, wait_for

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROMTOOL = os.path.join(TOP, "build", "tools", "promtool")
METRICS_H = os.path.join(TOP, "src", "core", "metrics.h")
METRICS_MD = os.path.join(TOP, "docs", "metrics.md")
ALERTS = os.path.join(TOP, "contrib", "prometheus", "alerts.yml")
ALERTS_TEST = os.path.join(TOP, "contrib", "prometheus", "alerts_test.yml")
DASHBOARD = os.path.join(TOP, "contrib", "grafana", "stageline.json")

PROM_CT = "text/plain; version=0.0.4; charset=utf-8"
RFC3339_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
UNMATCHED = "(unmatched)"


# --------------------------------------------------------------------------
# the catalog, read from src/core/metrics.h (the single source of truth)


def _prom_name(ref, mtype):
    """docs/metrics.md naming rules: stageline_ + dots to underscores, unit
    suffix (before _total on counters) to a base unit."""
    base = ref[: -len("_total")] if mtype == "counter" and ref.endswith("_total") else ref
    for old, new in (("_ms", "_seconds"), ("_mb", "_bytes"), ("_pct", "_ratio")):
        if base.endswith(old):
            base = base[: -len(old)] + new
            break
    name = "stageline_" + base.replace(".", "_")
    return name + "_total" if mtype == "counter" and ref.endswith("_total") else name


def load_catalog():
    """{reference name: {"type", "labels", "prom"}} from METRICS_CATALOG."""
    with open(METRICS_H) as f:
        src = f.read()
    entries = re.findall(r'X\(\s*M_\w+\s*,\s*METRIC_(COUNTER|GAUGE|HISTOGRAM)\s*,\s*"([^"]+)"\s*,'
                         r'\s*\\?\s*\(([^)]*)\)', src)
    cat = {}
    for mtype, ref, labels in entries:
        t = mtype.lower()
        cat[ref] = {"type": t, "labels": re.findall(r'"([^"]+)"', labels), "prom": _prom_name(ref, t)}
    assert len(cat) >= 20, f"could not read METRICS_CATALOG from {METRICS_H} ({len(cat)} entries)"
    return cat


CATALOG = load_catalog()


# --------------------------------------------------------------------------
# scraping and parsing


@pytest.fixture
def daemon(daemon):
    """The shared factory with auth off: these tests scrape the main listener,
    where /metrics needs the admin scope when auth is on (tested below)."""
    def make(config=None, **kw):
        cfg = {"auth.enabled": False}
        cfg.update(config or {})
        return daemon(cfg, **kw)
    return make


@pytest.fixture
def sl(daemon):
    return daemon()


def scrape_json(d, port=None):
    port = port or d.port
    st, h, body = http_request(port, "GET", "/metrics.json", host=d.host)
    assert st == 200, (st, body[:500])
    assert h.get("content-type", "").split(";")[0].strip() == "application/json", h
    return json.loads(body)


def scrape_prom(d, port=None):
    port = port or d.port
    st, h, body = http_request(port, "GET", "/metrics", host=d.host)
    assert st == 200, (st, body[:500])
    return h, body.decode("utf-8")


_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\})')


def _unescape(v):
    out, i = [], 0
    while i < len(v):
        c = v[i]
        if c == "\\" and i + 1 < len(v):
            n = v[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(n, "\\" + n))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_value(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    return float(s)


class Exposition:
    """A parsed Prometheus text 0.0.4 exposition. Raises AssertionError on
    anything malformed (the parser is strict on purpose)."""

    def __init__(self, text):
        self.text = text
        self.help = {}
        self.type = {}
        self.order = []
        self.samples = []  # (family, sample name, labels dict, value)
        assert text.endswith("\n"), "exposition does not end with a newline"
        for n, ln in enumerate(text.split("\n")[:-1], 1):
            assert ln.strip(), f"line {n}: empty line"
            if ln.startswith("# HELP "):
                name, _, h = ln[7:].partition(" ")
                assert name not in self.help, f"line {n}: second HELP for {name}"
                self.help[name] = h
                if name not in self.order:
                    self.order.append(name)
            elif ln.startswith("# TYPE "):
                name, _, t = ln[7:].partition(" ")
                assert name not in self.type, f"line {n}: second TYPE for {name}"
                assert t in ("counter", "gauge", "histogram", "summary", "untyped"), ln
                self.type[name] = t
                assert name in self.help, f"line {n}: TYPE before HELP for {name}"
            elif ln.startswith("#"):
                continue
            else:
                self.samples.append(self._sample(ln, n))

    def _sample(self, ln, n):
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", ln)
        assert m, f"line {n}: bad sample {ln!r}"
        name = m.group(1)
        rest = ln[m.end():]
        labels = {}
        if rest.startswith("{"):
            pos = 1
            if rest[pos:pos + 1] == "}":
                pos += 1
            else:
                while True:
                    lm = _LABEL_RE.match(rest, pos)
                    assert lm, f"line {n}: bad labels in {ln!r}"
                    assert lm.group(1) not in labels, f"line {n}: duplicate label {ln!r}"
                    labels[lm.group(1)] = _unescape(lm.group(2))
                    pos = lm.end()
                    if lm.group(3) == "}":
                        break
            rest = rest[pos:]
        parts = rest.split()
        assert 1 <= len(parts) <= 2, f"line {n}: bad sample {ln!r}"
        value = _parse_value(parts[0])
        fam = self.family_of(name)
        assert fam is not None, f"line {n}: sample {name} has no # TYPE family"
        return (fam, name, labels, value)

    def family_of(self, sample_name):
        if sample_name in self.type:
            return sample_name
        for suf in ("_bucket", "_sum", "_count"):
            if sample_name.endswith(suf):
                base = sample_name[: -len(suf)]
                if self.type.get(base) == "histogram":
                    return base
        return None

    def value(self, sample_name, **labels):
        """The value of the sample with exactly these labels, or None."""
        for _, name, lab, v in self.samples:
            if name == sample_name and lab == labels:
                return v
        return None

    def label_values(self, label):
        return {lab[label] for _, _, lab, _ in self.samples if label in lab}


def jkey(name, **labels):
    """The JSON key of a series: name|k=v,... in the catalog's label order."""
    if not labels:
        return name
    order = CATALOG[name]["labels"]
    assert sorted(order) == sorted(labels), (name, order, labels)
    return name + "|" + ",".join(f"{k}={labels[k]}" for k in order)


def counter(snap, name, **labels):
    return snap["counters"].get(jkey(name, **labels), 0)


def hist_count(snap, name, **labels):
    h = snap["histograms"].get(jkey(name, **labels))
    return h["count"] if h else 0


def promtool_or_skip():
    if not (os.path.isfile(PROMTOOL) and os.access(PROMTOOL, os.X_OK)):
        pytest.skip(f"{PROMTOOL} is missing: run contrib/promtool to fetch it "
                    "(contrib/check must call contrib/promtool before the tests)")
    return PROMTOOL


def promtool_check_metrics(text):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def head_request(method="GET", path="/healthz", headers=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------
# exact counter deltas


def test_counters_move_by_exact_deltas(sl):
    n = 7
    s1 = scrape_json(sl)
    for _ in range(n):
        st, _, _ = sl.http("GET", "/healthz")
        assert st == 200
    st, _, _ = sl.http("GET", "/no/such/thing")
    assert st == 404
    st, _, _ = sl.http("POST", "/healthz", body=b"")
    assert st == 405
    s2 = scrape_json(sl)

    def d_counter(name, **labels):
        return counter(s2, name, **labels) - counter(s1, name, **labels)

    def d_hist(name, **labels):
        return hist_count(s2, name, **labels) - hist_count(s1, name, **labels)

    rq = "http.requests_total"
    assert d_counter(rq, method="GET", route="/healthz", code_class="2xx") == n
    # the first scrape is counted once it is answered, the second is not yet
    assert d_counter(rq, method="GET", route="/metrics.json", code_class="2xx") == 1
    assert d_counter(rq, method="GET", route=UNMATCHED, code_class="4xx") == 1
    assert d_counter(rq, method="POST", route="/healthz", code_class="4xx") == 1
    # nothing else moved: the sum of every requests_total delta is exact
    total = sum(v for k, v in s2["counters"].items() if k.startswith(rq + "|")) - \
        sum(v for k, v in s1["counters"].items() if k.startswith(rq + "|"))
    assert total == n + 3, (s1["counters"], s2["counters"])

    er = "http.errors_total"
    assert d_counter(er, route=UNMATCHED, code="404") == 1
    assert d_counter(er, route="/healthz", code="405") == 1
    total_err = sum(v for k, v in s2["counters"].items() if k.startswith(er + "|")) - \
        sum(v for k, v in s1["counters"].items() if k.startswith(er + "|"))
    assert total_err == 2, s2["counters"]
    assert not any(k.startswith(er + "|") and ",code=2" in k for k in s2["counters"]), \
        "a 2xx response was counted as an error"

    lat = "http.request_latency_ms"
    assert d_hist(lat, route="/healthz") == n + 1  # the GETs and the 405 (same route)
    assert d_hist(lat, route="/metrics.json") == 1
    assert d_hist(lat, route=UNMATCHED) == 1
    h = s2["histograms"][jkey(lat, route="/healthz")]
    assert h["buckets"]["+Inf"] == h["count"]
    assert h["sum"] > 0


def test_prometheus_and_json_agree(sl):
    """Same registry, two renderings: names and units converted as documented."""
    for _ in range(3):
        sl.http("GET", "/healthz")
    snap = scrape_json(sl)
    _, text = scrape_prom(sl)
    e = Exposition(text)
    # /healthz saw no requests between the two scrapes
    key = jkey("http.requests_total", method="GET", route="/healthz", code_class="2xx")
    assert e.value("stageline_http_requests_total", method="GET", route="/healthz",
                   code_class="2xx") == snap["counters"][key]
    hj = snap["histograms"][jkey("http.request_latency_ms", route="/healthz")]
    base = "stageline_http_request_latency_seconds"
    assert e.value(base + "_count", route="/healthz") == hj["count"]
    assert e.value(base + "_sum", route="/healthz") == pytest.approx(hj["sum"] / 1000.0, rel=1e-9)
    for bound, cum in hj["buckets"].items():
        le = "+Inf" if bound == "+Inf" else None
        if le is None:
            # find the Prometheus bucket whose bound is the JSON bound / 1000
            cands = [lab["le"] for _, name, lab, _ in e.samples
                     if name == base + "_bucket" and lab.get("route") == "/healthz"
                     and lab["le"] != "+Inf" and math.isclose(float(lab["le"]), float(bound) / 1000,
                                                               rel_tol=1e-12)]
            assert len(cands) == 1, (bound, cands)
            le = cands[0]
        assert e.value(base + "_bucket", route="/healthz", le=le) == cum, (bound, le)
    # a gauge that never changes after startup
    assert e.value("stageline_process_start_time_seconds") == \
        snap["gauges"]["process.start_time_seconds"]


# --------------------------------------------------------------------------
# limit rejections (raw sockets)

LIMIT_CASES = [
    # (id, config overrides, request bytes, status, limit label per docs/metrics.md)
    ("header_size", {}, head_request(headers=[(f"X-Fill-{i}", "a" * 4096) for i in range(9)]),
     431, "header_size"),
    ("header_fields", {}, head_request(headers=[(f"X-F{i}", "v") for i in range(150)]),
     431, "header_fields"),
    ("body_size", {}, head_request("POST", "/healthz", [("Content-Length", str(2 * 1024 * 1024))]),
     413, "body_size"),
    ("framing", {}, head_request("POST", "/healthz", [("Content-Length", "3"),
                                                     ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
     400, "framing"),
    ("header_timeout", {"limits.header_timeout": "1s"}, b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
     408, "header_timeout"),
    ("uri_size", {}, head_request(path="/healthz?q=" + "a" * 9000), 414, "uri_size"),
    ("malformed", {}, b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon in this line\r\n\r\n",
     400, "malformed"),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limit_rejection_counted_exactly_once(daemon, case):
    _, overrides, data, status, limit = case
    d = daemon(overrides)
    s1 = scrape_json(d)
    res = d.raw(data, read_timeout=5.0)
    assert_refused(res, status)
    s2 = scrape_json(d)
    name = "http.limit_rejections_total"
    moved = {k: v - s1["counters"].get(k, 0) for k, v in s2["counters"].items()
             if k.startswith(name + "|") and v != s1["counters"].get(k, 0)}
    assert moved == {jkey(name, limit=limit): 1}, \
        f"a {status} refusal should count limit={limit!r} exactly once; moved: {moved}"
    # refused connections are not left behind in the open-connections gauge
    # (1: the connection of the scrape itself)
    wait_for(lambda: scrape_json(d)["gauges"]["http.connections_open"] == 1, 3.0, 0.05,
             "http.connections_open back to 1")
    # and the label is one docs/metrics.md lists
    with open(METRICS_MD) as f:
        row = next(ln for ln in f if ln.startswith("| `http.limit_rejections_total`"))
    assert f"`{limit}`" in row, f"limit={limit!r} is emitted but not documented: {row}"


# --------------------------------------------------------------------------
# the Prometheus exposition


def test_prometheus_exposition_format_and_names(sl):
    sl.http("GET", "/healthz")
    sl.http("GET", "/nope")
    h, text = scrape_prom(sl)
    assert h.get("content-type") == PROM_CT, h
    e = Exposition(text)
    # HELP and TYPE for every family, and nothing else
    assert set(e.help) == set(e.type), set(e.help) ^ set(e.type)
    for name, hlp in e.help.items():
        assert hlp.strip(), f"{name}: empty HELP"
    want = {c["prom"]: c["type"] for c in CATALOG.values()}
    assert e.type == want, {"missing": set(want) - set(e.type), "extra": set(e.type) - set(want)}
    # catalog order
    order = [c["prom"] for c in CATALOG.values()]
    assert e.order == order
    # names: ARCHITECTURE §9 and promtool's lint rules
    assert e.type["stageline_http_request_latency_seconds"] == "histogram"
    assert e.type["stageline_proc_memory_rss_bytes"] == "gauge"
    assert e.type["stageline_scratch_disk_used_ratio"] == "gauge"
    assert e.type["stageline_event_loop_lag_seconds"] == "histogram"
    for name, t in e.type.items():
        assert re.match(r"^stageline_[a-z][a-z0-9_]*$", name), name
        for bad in ("_ms", "_mb", "_pct", "_sec", "_kb", "_us"):
            assert not name.endswith(bad) and bad + "_" not in name, f"{name}: abbreviated unit"
        assert name.endswith("_total") == (t == "counter"), f"{name} ({t}): _total iff counter"
        assert not re.search(r"_(bucket|sum|count)$", name), name
    # histograms: cumulative buckets ending in +Inf == _count, with _sum
    for fam, t in e.type.items():
        if t != "histogram":
            continue
        series = {}
        for f, name, lab, v in e.samples:
            if f != fam:
                continue
            key = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "sum": None, "count": None})
            if name == fam + "_bucket":
                series[key]["buckets"].append((lab["le"], v))
            elif name == fam + "_sum":
                series[key]["sum"] = v
            else:
                series[key]["count"] = v
        for key, s in series.items():
            les = [_parse_value(le) for le, _ in s["buckets"]]
            assert les == sorted(les) and les[-1] == math.inf, (fam, key, les)
            counts = [v for _, v in s["buckets"]]
            assert counts == sorted(counts), (fam, key, counts)
            assert s["count"] == counts[-1] and s["sum"] is not None, (fam, key, s)
    # unlabelled metrics are exposed from startup
    for c in CATALOG.values():
        if not c["labels"] and c["type"] != "histogram":
            assert e.value(c["prom"]) is not None, f"{c['prom']} has no sample"


def test_promtool_check_metrics_clean_under_load(sl):
    promtool_or_skip()
    # 16 keep-alive clients hammer the server (at least 25 requests each, a
    # few hundred in all) for as long as the scrapes take, so every scrape is
    # rendered while requests are being counted.
    threads_n, min_per_thread, max_per_thread, n_scrapes = 16, 25, 3000, 6
    paths = ["/healthz", "/no/such/path", "/healthz", "/v1/jobs/0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"]
    sent = {}
    errors = []
    lock = threading.Lock()
    start, stop = threading.Event(), threading.Event()
    done_min = threading.Semaphore(0)

    def worker(i):
        start.wait()
        conn = http.client.HTTPConnection(sl.host, sl.port, timeout=10)
        try:
            j = 0
            while j < max_per_thread and (j < min_per_thread or not stop.is_set()):
                path = paths[(i + j) % len(paths)]
                method = "POST" if j % 7 == 6 else "GET"
                conn.request(method, path, body=b"" if method == "POST" else None)
                r = conn.getresponse()
                r.read()
                with lock:
                    sent[(method, path, r.status)] = sent.get((method, path, r.status), 0) + 1
                j += 1
                if j == min_per_thread:
                    done_min.release()
        except Exception as exc:  # noqa: BLE001
            with lock:
                errors.append(repr(exc))
            done_min.release()
        finally:
            conn.close()

    s1 = scrape_json(sl)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    start.set()
    scrapes, under_load = [], 0
    for _ in range(n_scrapes):
        busy = all(t.is_alive() for t in threads)
        scrapes.append(scrape_prom(sl)[1])
        under_load += busy and all(t.is_alive() for t in threads)
        time.sleep(0.02)
    for _ in range(threads_n):
        assert done_min.acquire(timeout=60), "clients did not finish their requests"
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    total_sent = sum(sent.values())
    assert total_sent >= threads_n * min_per_thread
    assert under_load == n_scrapes, f"only {under_load} of {n_scrapes} scrapes overlapped the load"
    s2 = scrape_json(sl)

    for i, text in enumerate(scrapes):
        Exposition(text)  # well-formed, HELP/TYPE everywhere
        rc, out = promtool_check_metrics(text)
        assert rc == 0 and out == "", f"scrape {i}: promtool check metrics exit {rc}:\n{out}"

    # and the counters stayed exact under concurrency
    rq = "http.requests_total|"
    delta = sum(v for k, v in s2["counters"].items() if k.startswith(rq)) - \
        sum(v for k, v in s1["counters"].items() if k.startswith(rq))
    assert delta == total_sent + len(scrapes) + 1, (delta, len(scrapes), sent)
    prom_scrapes = counter(s2, "http.requests_total", method="GET", route="/metrics",
                           code_class="2xx") - \
        counter(s1, "http.requests_total", method="GET", route="/metrics", code_class="2xx")
    assert prom_scrapes == len(scrapes)
    # every load connection is closed: the gauge is back to the scraper's own
    wait_for(lambda: scrape_json(sl)["gauges"]["http.connections_open"] == 1, 5.0, 0.05,
             "http.connections_open back to 1 after the load")
    healthz = sum(v for (m, p, st), v in sent.items() if m == "GET" and p == "/healthz")
    assert counter(s2, "http.requests_total", method="GET", route="/healthz", code_class="2xx") - \
        counter(s1, "http.requests_total", method="GET", route="/healthz", code_class="2xx") == healthz


# --------------------------------------------------------------------------
# label hygiene: templates, never raw paths or secrets

SECRETS = [
    "0190aaaa", "eeeeffff0000", "/some/random/path", "token=", "tok3nvalue",
    "sl_abcdefgh", "SECRETSECRETSECRETSECRET123456", "Bearer",
    "X-Amz-Signature", "feedfacecafebeef", "deadbeef", "supersecretvalue", "evil",
]


def test_routes_are_templates_and_no_secrets_leak(sl):
    s1 = scrape_json(sl)
    unmatched = [
        ("GET", "/v1/jobs/0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000", {}),
        ("GET", "/some/random/path?token=tok3nvalue", {}),
        ("GET", "/some/random/path/%22%7D%0Aevil", {}),
    ]
    for method, path, hdrs in unmatched:
        st, _, _ = sl.http(method, path, headers=hdrs)
        # 503 while the daemon is still checking its schema: the label rule holds then too
        assert st in (400, 401, 403, 404, 503), (path, st)
    planted = [
        ("GET", "/healthz", {"Authorization": "Bearer sl_abcdefgh_SECRETSECRETSECRETSECRET123456"}),
        ("GET", "/healthz?X-Amz-Signature=feedfacecafebeef&sig=deadbeef", {}),
        ("GET", "/healthz", {"X-Api-Key": "supersecretvalue"}),
        ("GET", "/metrics?X-Amz-Signature=feedfacecafebeef&sig=deadbeef",
         {"Authorization": "Bearer sl_abcdefgh_SECRETSECRETSECRETSECRET123456"}),
        ("GET", "/metrics.json?token=tok3nvalue", {"X-Api-Key": "supersecretvalue"}),
    ]
    for method, path, hdrs in planted:
        st, _, _ = sl.http(method, path, headers=hdrs)
        assert st == 200, (path, st)
    # a raw request line no client library would send
    res = sl.raw(b"GET /evil\"}\xff?token=tok3nvalue HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer sl_abcdefgh_SECRETSECRETSECRETSECRET123456\r\n"
                 b"Connection: close\r\n\r\n", read_timeout=3.0)
    assert res.data.startswith(b"HTTP/1.1 "), res

    _, text = scrape_prom(sl)
    s2 = scrape_json(sl)
    body_json = json.dumps(s2)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into /metrics"
        assert secret not in body_json, f"{secret!r} leaked into /metrics.json"
    e = Exposition(text)
    for route in e.label_values("route"):
        assert route == UNMATCHED or re.match(r"^/[A-Za-z0-9_./{}-]*$", route), route
        assert not re.search(r"[0-9a-f]{8}", route), f"route label looks like a raw id: {route}"
    # every unmatched path landed under the one "(unmatched)" label
    moved = sum(v - s1["counters"].get(k, 0) for k, v in s2["counters"].items()
                if k.startswith("http.requests_total|") and f"route={UNMATCHED}," in k)
    templated_jobs = sum(v - s1["counters"].get(k, 0) for k, v in s2["counters"].items()
                         if k.startswith("http.requests_total|") and "route=/v1/jobs/{id}," in k)
    assert moved + templated_jobs == len(unmatched) + 1, s2["counters"]
    if os.access(PROMTOOL, os.X_OK):
        rc, out = promtool_check_metrics(text)
        assert rc == 0 and out == "", out


# --------------------------------------------------------------------------
# the resource sampler


def test_sampler_gauges(sl, tmp_path):
    # once start-up (the scheduler, the pools) has settled: a sample is up
    # to a second old
    wait_for(lambda: scrape_json(sl)["histograms"]["event_loop.lag_ms"]["count"] >= 3, 5.0, 0.1,
             "three sampler ticks")
    s1 = scrape_json(sl)
    g = s1["gauges"]
    assert g["proc.memory_rss_mb"] > 0
    assert g["proc.open_fds"] > 0
    assert 0 < g["scratch.disk_used_pct"] <= 100
    now = time.time()
    start = g["process.start_time_seconds"]
    assert now - 60 < start <= now + 1, (start, now)
    # close to what the kernel says about the process
    pid = sl.proc.pid
    with open(f"/proc/{pid}/statm") as f:
        rss_mb = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576
    assert rss_mb / 2 <= g["proc.memory_rss_mb"] <= rss_mb * 2, (g["proc.memory_rss_mb"], rss_mb)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(g["proc.open_fds"] - fds) <= 3, (g["proc.open_fds"], fds)
    st = os.statvfs(str(tmp_path))  # scheduler.scratch_dir resolves under the config's dir
    used = st.f_blocks - st.f_bfree
    pct = 100.0 * used / (used + st.f_bavail)
    assert abs(g["scratch.disk_used_pct"] - pct) < 2.0, (g["scratch.disk_used_pct"], pct)

    lag = "event_loop.lag_ms"
    c1 = s1["histograms"][lag]["count"]
    t0 = time.monotonic()
    # the sampler ticks once a second: two more observations within ~2 s
    s2 = wait_for(lambda: (lambda snap: snap if snap["histograms"][lag]["count"] - c1 >= 2
                           else None)(scrape_json(sl)), 5.0, 0.1, "two sampler ticks")
    c2 = s2["histograms"][lag]["count"]
    assert time.monotonic() - t0 >= 0.9, "ticks came faster than once a second"
    assert s2["gauges"]["process.start_time_seconds"] == start
    # on an idle loop the lag is small
    assert s2["histograms"][lag]["sum"] / c2 < 250, s2["histograms"][lag]


# --------------------------------------------------------------------------
# where /metrics is served, and switching metrics off


def test_separate_metrics_listener(daemon):
    mport = free_port()
    d = daemon({"server.metrics_listen": f"127.0.0.1:{mport}"})
    st, h, body = http_request(mport, "GET", "/metrics")
    assert st == 200 and h.get("content-type") == PROM_CT, (st, h)
    Exposition(body.decode())
    st, _, body = http_request(mport, "GET", "/metrics.json")
    assert st == 200 and "counters" in json.loads(body)
    # not on the main listener
    for path in ("/metrics", "/metrics.json"):
        st, _, body = d.http("GET", path)
        assert st == 404, (path, st, body[:200])
    # the main listener's 404s for /metrics are unmatched, not the /metrics route
    snap = scrape_json(d, port=mport)
    assert counter(snap, "http.errors_total", route=UNMATCHED, code="404") == 2, snap["counters"]
    assert counter(snap, "http.requests_total", method="GET", route="/metrics", code_class="4xx") == 0
    assert counter(snap, "http.requests_total", method="GET", route="/metrics", code_class="2xx") == 1
    # the main listener still serves the API
    st, _, _ = d.http("GET", "/healthz")
    assert st == 200
    if os.access(PROMTOOL, os.X_OK):
        rc, out = promtool_check_metrics(scrape_prom(d, port=mport)[1])
        assert rc == 0 and out == "", out


def test_metrics_disabled_counts_nothing(daemon):
    d = daemon({"server.metrics": False})
    for _ in range(5):
        d.http("GET", "/healthz")
    d.http("GET", "/nope")
    d.raw(head_request(headers=[(f"X-Fill-{i}", "a" * 4096) for i in range(9)]))
    time.sleep(1.2)  # a sampler tick
    snap = scrape_json(d)
    assert snap["counters"], "unlabelled counters are still exposed (at 0)"
    assert all(v == 0 for v in snap["counters"].values()), snap["counters"]
    assert not any("|" in k for k in snap["counters"]), snap["counters"]
    assert all(h["count"] == 0 and h["sum"] == 0 for h in snap["histograms"].values()), \
        snap["histograms"]
    h, text = scrape_prom(d)
    assert h.get("content-type") == PROM_CT
    e = Exposition(text)
    assert e.value("stageline_http_requests_total", method="GET", route="/healthz",
                   code_class="2xx") is None
    if os.access(PROMTOOL, os.X_OK):
        rc, out = promtool_check_metrics(text)
        assert rc == 0 and out == "", out


# --------------------------------------------------------------------------
# the JSON shape


def test_json_shape(sl):
    sl.http("GET", "/healthz")
    sl.http("GET", "/nope")
    snap = scrape_json(sl)
    assert set(snap) == {"timestamp", "counters", "gauges", "histograms"}, set(snap)
    ts = snap["timestamp"]
    assert isinstance(ts, str) and RFC3339_RE.match(ts), ts
    t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert t.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - t).total_seconds()) < 60, ts
    section_of = {"counter": "counters", "gauge": "gauges", "histogram": "histograms"}
    key_re = re.compile(r"^([a-z][a-z0-9_.]*)(?:\|(.*))?$")
    for section in ("counters", "gauges", "histograms"):
        assert isinstance(snap[section], dict)
        for key, val in snap[section].items():
            m = key_re.match(key)
            assert m, key
            name, lab = m.group(1), m.group(2)
            assert name in CATALOG, f"{key}: not a catalog name"
            assert section_of[CATALOG[name]["type"]] == section, f"{key} in {section}"
            if lab is None:
                assert CATALOG[name]["labels"] == [], f"{key}: labels missing"
            else:
                pairs = [p.split("=", 1) for p in lab.split(",")]
                assert all(len(p) == 2 and p[1] for p in pairs), key
                assert [p[0] for p in pairs] == CATALOG[name]["labels"], key
            if section != "histograms":
                assert isinstance(val, (int, float)) and not isinstance(val, bool), (key, val)
                assert math.isfinite(val), (key, val)
                continue
            assert set(val) == {"count", "sum", "buckets"}, (key, val)
            assert isinstance(val["count"], int) and not isinstance(val["count"], bool)
            assert isinstance(val["sum"], (int, float))
            b = val["buckets"]
            keys = list(b)
            assert keys[-1] == "+Inf", (key, keys)
            bounds = [float(k) for k in keys[:-1]]
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), (key, keys)
            counts = list(b.values())
            assert all(isinstance(c, int) for c in counts), (key, counts)
            assert counts == sorted(counts), f"{key}: buckets not cumulative: {counts}"
            assert b["+Inf"] == val["count"], (key, val)
    # unlabelled metrics are there from startup
    for name, c in CATALOG.items():
        if not c["labels"]:
            assert name in snap[section_of[c["type"]]], f"{name} missing from the JSON"
    h = snap["histograms"][jkey("http.request_latency_ms", route="/healthz")]
    assert h["count"] >= 1
    assert "0.1" in h["buckets"] and "60000" in h["buckets"], h["buckets"].keys()


def documented_buckets():
    """{reference name: [bounds in ms]} from the bucket table of docs/metrics.md."""
    out = {}
    with open(METRICS_MD) as f:
        for ln in f:
            m = re.match(r"^\|\s*[a-z]+\s*\|([^|]*)\|\s*([0-9][0-9., ]*)\|\s*$", ln)
            if not m:
                continue
            bounds = [float(x) for x in m.group(2).replace(" ", "").split(",") if x]
            for name in re.findall(r"`([a-z_.]+)`", m.group(1)):
                out[name] = bounds
    return out


def test_histogram_buckets_match_the_documentation(daemon):
    d = daemon(wait_ready=True)  # with a database, so DB query latency has series
    d.http("GET", "/healthz")
    d.http("GET", "/readyz")
    # wait for a sampler tick, so the loop-lag histogram has a series
    snap = wait_for(lambda: (lambda sn: sn if sn["histograms"].get("event_loop.lag_ms", {})
                             .get("count") else None)(scrape_json(d)), 5.0, 0.05,
                    "a sampler tick")
    docs = documented_buckets()
    hist = {c for c, v in CATALOG.items() if v["type"] == "histogram"}
    assert set(docs) == hist, f"bucket table vs catalog histograms: {set(docs) ^ hist}"
    seen, wrong = set(), {}
    for key, h in snap["histograms"].items():
        name = key.split("|")[0]
        bounds = [float(b) for b in h["buckets"] if b != "+Inf"]
        if bounds != docs[name]:
            wrong[name] = f"daemon {bounds} != documented {docs[name]}"
        seen.add(name)
    assert {"http.request_latency_ms", "event_loop.lag_ms", "jobs.total_latency_ms",
            "db.query_latency_ms"} <= seen, seen
    assert not wrong, "histogram buckets differ from docs/metrics.md:\n" + \
        "\n".join(f"  {k}: {v}" for k, v in sorted(wrong.items()))


def test_db_connections_gauge_by_state(daemon):
    """db.connections is documented as live (not "emitted once ... lands"):
    the health connection must show up under its state."""
    d = daemon(wait_ready=True)
    snap = scrape_json(d)
    series = {k: v for k, v in snap["gauges"].items() if k.startswith("db.connections|state=")}
    assert series, f"no db.connections series with a ready database: {snap['gauges']}"
    assert sum(series.values()) >= 1, series


# --------------------------------------------------------------------------
# contrib/: alert rules and the dashboard against what the daemon exposes


def test_alert_rules_pass_promtool():
    promtool_or_skip()
    r = subprocess.run([PROMTOOL, "check", "rules", ALERTS], capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "SUCCESS" in out and not re.search(r"(?i)warn", out), out
    r = subprocess.run([PROMTOOL, "test", "rules", ALERTS_TEST], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(ALERTS_TEST))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "SUCCESS" in out, out


def exposed_names(e):
    """Every series name a query may use: families plus histogram suffixes."""
    names = set()
    for fam, t in e.type.items():
        names.add(fam)
        if t == "histogram":
            names |= {fam + "_bucket", fam + "_sum", fam + "_count"}
    return names


PROMQL_FUNCS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "time", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "deriv", "predict_linear",
    "max_over_time", "min_over_time", "avg_over_time", "label_replace", "vector", "scalar",
    "absent", "changes", "delta", "resets", "quantile", "stddev", "round", "sort", "sort_desc",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "offset", "bool", "inf", "nan"}


def metric_names_in(expr):
    """Series names an expression selects: strip strings, label matchers,
    ranges and grouping clauses; what is left and not a function or keyword
    is a metric name."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", s):
        tok, call = m.group(1), m.group(2)
        if call:
            assert tok in PROMQL_FUNCS, f"unknown function {tok} in {expr}"
        elif tok.lower() not in PROMQL_WORDS and not re.match(r"^\d", tok):
            names.add(tok)
    return names


def test_dashboard_and_alerts_use_exposed_names_only(sl, tmp_path):
    _, text = scrape_prom(sl)
    expo = Exposition(text)
    allowed = exposed_names(expo)

    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["uid"] == "stageline"
    assert 36 <= dash["schemaVersion"] <= 41
    assert any(i.get("name") == "DS_PROMETHEUS" and i.get("type") == "datasource"
               for i in dash.get("__inputs", [])), dash.get("__inputs")
    exprs = []
    ids = set()
    rows = []
    for p in dash["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        if p["type"] == "row":
            rows.append(p["title"])
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            exprs.append((p["title"], t["expr"]))
    for want in ("HTTP", "Jobs", "Stages", "Queue", "Modules", "External calls", "Database", "SSE",
                 "Process"):
        assert want in rows, f"row {want!r} missing: {rows}"
    used = set()
    for title, expr in exprs:
        names = metric_names_in(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - allowed
        assert not unknown, f"panel {title!r} uses names the daemon does not expose: {unknown}"
        used |= names
    # every family has a panel
    missing = set(expo.type) - {expo.family_of(n) for n in used}
    assert not missing, f"families with no panel: {missing}"

    with open(ALERTS) as f:
        rules = f.read()
    alert_exprs = re.findall(r"expr:\s*\|\n((?:\s{10,}.*\n)+)|expr:\s*(.+)\n", rules)
    assert len(alert_exprs) >= 10
    for block, single in alert_exprs:
        expr = block or single
        names = metric_names_in(expr) - {"up"}
        unknown = names - allowed
        assert not unknown, f"alert expression uses unknown names {unknown}: {expr}"

    # the dashboard's queries are valid PromQL: promtool parses them as rules
    if os.access(PROMTOOL, os.X_OK):
        lines = ["groups:", "  - name: dashboard", "    rules:"]
        for i, (_, expr) in enumerate(exprs):
            e = (expr.replace("$__rate_interval", "5m").replace("$job", ".*")
                 .replace("$instance", ".*"))
            lines += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(e)}"]
        rf = tmp_path / "dashboard_rules.yml"
        rf.write_text("\n".join(lines) + "\n")
        r = subprocess.run([PROMTOOL, "check", "rules", str(rf)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_metrics_need_admin_on_the_main_listener_with_auth(daemon, pg):
    """With auth on, /metrics and /metrics.json on the main listener answer
    401 without a key (and the separate listener stays open)."""
    mport = free_port()
    d = daemon({"auth.enabled": True})
    for path in ("/metrics", "/metrics.json"):
        st, h, body = d.http("GET", path)
        assert st == 401, (path, st, body)
        assert h.get("www-authenticate") == 'Bearer realm="stageline"'
    d2 = daemon({"auth.enabled": True, "server.metrics_listen": f"127.0.0.1:{mport}"})
    st, _, _ = http_request(mport, "GET", "/metrics")
    assert st == 200
    st, _, _ = d2.http("GET", "/metrics")
    assert st == 404
