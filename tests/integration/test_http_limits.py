"""The HTTP edge, driven byte by byte over raw sockets: every limit of
ARCHITECTURE.md §10 is answered with a complete problem+json response,
`Connection: close` and a clean close (TOOLCHAIN.md §8), never a silent close
or a reset; pipelining, keep-alive, request ids and the access log."""

import socket
import time

import pytest

from slhelpers import (UUID_RE, assert_problem, assert_refused, count_responses,
                       parse_responses)

LIMIT = 1024 * 1024  # limits.max_input_bytes in the base test config


def req(method="GET", path="/healthz", headers=(), body=b"", host="x"):
    """Bytes of one HTTP/1.1 request; headers is a list of (name, value)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def n_responses(n):
    return lambda data: count_responses(data) >= n


def exchange_on(sock, d, data, n=1, timeout=5.0):
    """Sends data on an open socket and reads until n responses are complete."""
    return d.raw(data, read_timeout=timeout, sock=sock, close=False, until=n_responses(n))


def connect(d):
    return socket.create_connection((d.host, d.port), timeout=5.0)


# --------------------------------------------------------------------------
# 408: the request head (or body) must arrive within limits.header_timeout


def test_slowloris_head_gets_408(daemon):
    d = daemon({"limits.header_timeout": "1s"})
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    drip = [head] + [bytes([c]) for c in b"X-Slow: " + b"a" * 200]  # ~40 s of drip if not stopped
    res = d.raw(drip, delay=0.2, read_timeout=5.0, stop_sending_on_data=True)
    assert res.t_first is not None, f"no answer to a slowloris client: {res!r}"
    assert res.t_first < 4.0, f"408 came late ({res.t_first:.2f}s, header_timeout 1s)"
    assert res.t_first >= 0.8, f"408 came before the deadline ({res.t_first:.2f}s)"
    assert_refused(res, 408)
    d.wait_log(lambda l: l["event"] == "http.refused" and l["status"] == 408)


def test_stalled_body_gets_408(daemon):
    d = daemon({"limits.header_timeout": "1s"})
    res = d.raw(req("POST", "/healthz", [("Content-Length", "10")], b"abc"), read_timeout=5.0)
    assert res.t_first is not None and res.t_first < 4.0, res
    assert_refused(res, 408)


def test_silent_connection_is_closed_without_a_word(daemon):
    d = daemon({"limits.header_timeout": "1s"})
    res = d.raw(b"", read_timeout=5.0)
    assert res.eof and not res.reset, res
    assert res.data == b"", res
    assert res.elapsed < 4.0, res


# --------------------------------------------------------------------------
# 431: header block over 32 KiB, one field over 8 KiB, more than 100 fields


def test_header_block_over_limit_431(sl):
    hdrs = [(f"X-Fill-{i}", "a" * 4096) for i in range(9)]  # 9 x ~4 KiB > 32 KiB
    res = sl.raw(req(headers=hdrs))
    assert_refused(res, 431)


def test_single_9k_header_431(sl):
    res = sl.raw(req(headers=[("X-Big", "b" * 9 * 1024)]))
    assert_refused(res, 431)


def test_too_many_header_fields_431(sl):
    hdrs = [(f"X-H{i}", "v") for i in range(200)]
    res = sl.raw(req(headers=hdrs))
    assert_refused(res, 431)


def test_101_fields_431(sl):
    hdrs = [(f"X-H{i}", "v") for i in range(100)]  # + Host = 101
    res = sl.raw(req(headers=hdrs))
    assert_refused(res, 431)


def test_100_fields_and_31k_is_fine(sl):
    # Host + 99 fields = 100 fields; sum(klen + vlen + 4) = 9 + 99 * 320 = 31689 bytes
    hdrs = [(f"X-F{i:03d}", "c" * 309) for i in range(99)]
    res = sl.raw(req(headers=hdrs), until=n_responses(1))
    resps = parse_responses(res.data)
    assert len(resps) == 1 and resps[0].status == 200, res
    assert resps[0].json()["status"] == "ok"


# --------------------------------------------------------------------------
# 400: ambiguous framing and malformed syntax


def test_content_length_with_transfer_encoding_400(sl):
    # the classic smuggling shape: whatever follows must not be served
    smuggled = req("GET", "/nope")
    data = req("POST", "/healthz", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
               b"0\r\n\r\n" + smuggled)
    res = sl.raw(data)
    assert_refused(res, 400)


@pytest.mark.parametrize("values", [("5", "5"), ("5", "3")], ids=["equal", "different"])
def test_duplicate_content_length_400(sl, values):
    hdrs = [("Content-Length", values[0]), ("Content-Length", values[1])]
    res = sl.raw(req("POST", "/healthz", hdrs, b"abcde"))
    assert_refused(res, 400)


@pytest.mark.parametrize("te", ["gzip, chunked", "chunked, chunked", "identity"])
def test_transfer_encoding_other_than_chunked_400(sl, te):
    res = sl.raw(req("POST", "/healthz", [("Transfer-Encoding", te)], b"0\r\n\r\n"))
    assert_refused(res, 400)


def test_two_transfer_encoding_fields_400(sl):
    hdrs = [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]
    res = sl.raw(req("POST", "/healthz", hdrs, b"0\r\n\r\n"))
    assert_refused(res, 400)


@pytest.mark.parametrize("line", [
    b"GET /healthz XTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\r\n\r\n",        # bare LF ends the request line
    b"GET  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x01\x02\x03 / HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["bad-protocol", "bare-lf", "no-uri", "binary-method"])
def test_malformed_request_line_400(sl, line):
    res = sl.raw(line)
    assert_refused(res, 400)


def test_header_without_colon_400(sl):
    res = sl.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n")
    assert_refused(res, 400)


@pytest.mark.parametrize("cl", ["5x", "-1", "+5", "99999999999999999999999"])
def test_malformed_content_length_400(sl, cl):
    res = sl.raw(req("POST", "/healthz", [("Content-Length", cl)], b"hello"))
    assert_refused(res, 400)


# --------------------------------------------------------------------------
# 413: bodies over limits.max_input_bytes (1 MiB here), refused before the body


def test_content_length_over_limit_413_before_any_body(sl):
    res = sl.raw(req("POST", "/healthz", [("Content-Length", str(LIMIT + 1))]), read_timeout=4.0)
    # nothing of the body was sent: the answer can only come from the head
    assert_refused(res, 413)


def test_content_length_over_limit_413_while_streaming(sl):
    head = req("POST", "/healthz", [("Content-Length", str(LIMIT + 200 * 1024))])
    res = sl.raw([head] + [b"z" * 16384] * 12, delay=0.01, read_timeout=4.0)
    assert_refused(res, 413)


def test_chunked_sum_over_limit_413(sl):
    size = 0x90000  # two of these: 1.125 MiB declared
    data = req("POST", "/healthz", [("Transfer-Encoding", "chunked")])
    data += b"90000\r\n" + b"q" * size + b"\r\n" + b"90000\r\n"
    res = sl.raw(data, read_timeout=4.0)
    assert_refused(res, 413)


def test_huge_chunk_size_413(sl):
    data = req("POST", "/healthz", [("Transfer-Encoding", "chunked")]) + b"FFFFFFFF\r\n"
    res = sl.raw(data, read_timeout=4.0)
    assert_refused(res, 413)


def test_body_exactly_at_limit_is_not_refused(sl):
    # No route takes a body yet: a body of exactly the limit gets through the
    # size checks and reaches the router, which answers 405 (not 413).
    data = req("POST", "/healthz", [("Content-Length", str(LIMIT))], b"e" * LIMIT)
    res = sl.raw(data, read_timeout=5.0, until=n_responses(1))
    resps = parse_responses(res.data, allow_partial=True)
    assert len(resps) == 1, res
    assert_problem(resps[0], 405)
    assert resps[0].headers.get("allow") == "GET, HEAD", resps[0]


def test_chunked_body_exactly_at_limit_is_not_refused(sl):
    half = LIMIT // 2
    data = req("POST", "/healthz", [("Transfer-Encoding", "chunked")])
    data += (b"%x\r\n" % half + b"h" * half + b"\r\n") * 2 + b"0\r\n\r\n"
    res = sl.raw(data, read_timeout=5.0, until=n_responses(1))
    resps = parse_responses(res.data, allow_partial=True)
    assert len(resps) == 1, res
    assert_problem(resps[0], 405)


def test_post_healthz_405_with_allow(sl):
    res = sl.raw(req("POST", "/healthz", [("Content-Length", "5")], b"hello"), until=n_responses(1))
    resps = parse_responses(res.data)
    assert len(resps) == 1, res
    doc = assert_problem(resps[0], 405)
    assert resps[0].headers.get("allow") == "GET, HEAD", resps[0]
    assert doc["type"] == "urn:stageline:problem:method-not-allowed", doc


# --------------------------------------------------------------------------
# 414: request line over 8 KiB


def test_uri_over_8k_414(sl):
    res = sl.raw(req("GET", "/" + "u" * 9000))
    assert_refused(res, 414)


def test_uri_over_8k_414_on_a_kept_alive_connection(sl):
    s = connect(sl)
    try:
        first = exchange_on(s, sl, req())
        assert [r.status for r in parse_responses(first.data)] == [200], first
        res = sl.raw(req("GET", "/healthz?" + "q" * 9000), sock=s, close=False)
    finally:
        s.close()
    assert_refused(res, 414)


# --------------------------------------------------------------------------
# routing answers (these keep the connection open)


def test_unknown_path_404_and_connection_stays_usable(sl):
    s = connect(sl)
    try:
        r1 = exchange_on(s, sl, req("GET", "/nope"))
        resps = parse_responses(r1.data)
        assert len(resps) == 1, r1
        doc = assert_problem(resps[0], 404)
        assert doc["type"] == "urn:stageline:problem:not-found", doc
        assert resps[0].headers.get("connection", "").lower() != "close", resps[0]
        r2 = exchange_on(s, sl, req())
        assert [r.status for r in parse_responses(r2.data)] == [200], r2
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/healthz%00", "/x/../healthz", "/./healthz", "//healthz",
                                  "/%00", "/x/%2e%2e/healthz"])
def test_bad_path_400(sl, path):
    res = sl.raw(req("GET", path), until=n_responses(1))
    resps = parse_responses(res.data, allow_partial=True)
    assert len(resps) == 1, f"{path}: {res!r}"
    assert_problem(resps[0], 400)


# --------------------------------------------------------------------------
# pipelining and keep-alive


def test_pipelined_requests_in_one_write(sl):
    data = (req(headers=[("X-Request-Id", "pipe-1")]) + req(headers=[("X-Request-Id", "pipe-2")])
            + req())
    res = sl.raw(data, read_timeout=5.0, until=n_responses(3))
    resps = parse_responses(res.data, allow_partial=True)
    assert [r.status for r in resps] == [200, 200, 200], res
    ids = [r.headers.get("x-request-id") for r in resps]
    assert ids[:2] == ["pipe-1", "pipe-2"], ids
    assert ids[2] and UUID_RE.match(ids[2]), ids


def test_pipelined_mixed_answers_in_order(sl):
    data = req("GET", "/nope") + req("POST", "/healthz", [("Content-Length", "2")], b"{}") + req()
    res = sl.raw(data, read_timeout=5.0, until=n_responses(3))
    resps = parse_responses(res.data, allow_partial=True)
    assert [r.status for r in resps] == [404, 405, 200], res
    assert len({r.headers.get("x-request-id") for r in resps}) == 3, resps


def test_keep_alive_two_sequential_requests(sl):
    s = connect(sl)
    try:
        r1 = exchange_on(s, sl, req(headers=[("X-Request-Id", "ka-1")]))
        r2 = exchange_on(s, sl, req(headers=[("X-Request-Id", "ka-2")]))
    finally:
        s.close()
    a, b = parse_responses(r1.data), parse_responses(r2.data)
    assert [x.status for x in a + b] == [200, 200], (r1, r2)
    assert (a[0].headers["x-request-id"], b[0].headers["x-request-id"]) == ("ka-1", "ka-2")
    assert not r1.eof and not r2.eof


def test_idle_keep_alive_connection_is_closed(daemon):
    d = daemon({"limits.idle_timeout": "1s"})
    s = connect(d)
    try:
        first = exchange_on(s, d, req())
        assert [r.status for r in parse_responses(first.data)] == [200], first
        t0 = time.monotonic()
        rest = d.raw(b"", sock=s, close=False, read_timeout=5.0)
        waited = time.monotonic() - t0
    finally:
        s.close()
    assert rest.eof and not rest.reset, rest
    assert rest.data == b"", f"bytes sent on an idle close: {rest!r}"
    assert 0.8 <= waited < 4.0, f"idle close after {waited:.2f}s, idle_timeout 1s"


# --------------------------------------------------------------------------
# X-Request-Id


def test_well_formed_request_id_is_echoed(sl):
    rid = "client-req_42:a.b-C"
    st, h, _ = sl.http("GET", "/healthz", headers={"X-Request-Id": rid})
    assert st == 200 and h.get("x-request-id") == rid, h


@pytest.mark.parametrize("bad", ["has spaces in it", "a" * 200, "quote\"d", "semi;colon"])
def test_malformed_request_id_is_replaced(sl, bad):
    st, h, _ = sl.http("GET", "/healthz", headers={"X-Request-Id": bad})
    got = h.get("x-request-id")
    assert st == 200 and got and got != bad, h
    assert UUID_RE.match(got), got


def test_generated_request_ids_differ(sl):
    ids = {sl.http("GET", "/healthz")[1].get("x-request-id") for _ in range(5)}
    assert len(ids) == 5 and all(i and UUID_RE.match(i) for i in ids), ids


def test_refusal_carries_a_request_id_that_is_logged(sl):
    res = sl.raw(req(headers=[(f"X-H{i}", "v") for i in range(150)]))
    r, _ = assert_refused(res, 431)
    rid = r.headers.get("x-request-id")
    assert rid and UUID_RE.match(rid), r
    line = sl.wait_log(lambda l: l["event"] == "http.refused" and l.get("request_id") == rid)
    assert line["status"] == 431 and line["level"] == "info", line


# --------------------------------------------------------------------------
# the access log: one JSON line per request


def test_access_log_one_line_per_request(sl):
    cases = [
        ("GET", "/healthz", None, "acc-ok", 200, "/healthz"),
        ("GET", "/nope/deeper", None, "acc-404", 404, "(unmatched)"),
        ("POST", "/healthz", b"{}", "acc-405", 405, "/healthz"),
        ("GET", "/readyz", None, "acc-ready", 200, "/readyz"),
    ]
    sl.wait_ready()
    got = {}
    for method, path, body, rid, status, _ in cases:
        st, h, b = sl.http(method, path, body=body, headers={"X-Request-Id": rid})
        assert st == status, (path, st, b)
        got[rid] = b
    for method, path, _, rid, status, route in cases:
        line = sl.wait_log(lambda l, rid=rid: l["event"] == "http.access" and l.get("request_id") == rid,
                           what=f"http.access for {rid}")
        assert line["method"] == method, line
        assert line["route"] == route, line
        assert line["status"] == status, line
        assert line["bytes"] == len(got[rid]), line
        assert isinstance(line["duration_us"], int) and line["duration_us"] >= 0, line
        assert line["level"] == "info", line
    # exactly one line each, and none for anything else we didn't send
    access = [l for l in sl.log_lines() if l["event"] == "http.access"]
    for _, _, _, rid, _, _ in cases:
        assert sum(1 for l in access if l.get("request_id") == rid) == 1, access
