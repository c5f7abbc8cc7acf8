"""Helpers shared by the integration tests: plain HTTP through http.client,
raw sockets for the cases a well-behaved client can't produce, a parser for
HTTP/1.1 responses read off a raw socket, and deadline-based waiting.

Only the standard library: the suite runs under Debian's /usr/bin/python3."""

import errno
import http.client
import json
import re
import select
import socket
import time

PROBLEM_CT = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:stageline:problem:"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def free_port():
    """A TCP port that was free a moment ago (bind to :0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it returns something truthy or timeout seconds pass;
    returns that value, or raises AssertionError naming what was awaited."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def http_request(port, method, path, body=None, headers=None, host="127.0.0.1", timeout=5.0):
    """One request on a fresh connection. Returns (status, headers, body)
    with header names lowercased (repeated headers joined with ', ')."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {}
        for k, v in resp.getheaders():
            k = k.lower()
            hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
        return resp.status, hdrs, data
    finally:
        conn.close()


class RawResult:
    """What a raw exchange produced: the bytes, whether the server closed
    (EOF), whether it reset, and when the first byte and the end came."""

    def __init__(self):
        self.data = b""
        self.eof = False
        self.reset = False
        self.send_error = None
        self.t_first = None
        self.t_end = None
        self.elapsed = None

    def responses(self):
        return parse_responses(self.data)

    def __repr__(self):
        return (f"RawResult(eof={self.eof}, reset={self.reset}, send_error={self.send_error!r}, "
                f"t_first={self.t_first}, elapsed={self.elapsed}, data={self.data[:600]!r})")


def _read_some(sock, res, t0):
    try:
        chunk = sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        res.reset = True
        return False
    except BlockingIOError:
        return True
    if not chunk:
        res.eof = True
        return False
    if res.t_first is None:
        res.t_first = time.monotonic() - t0
    res.data += chunk
    return True


def raw_exchange(port, parts, read_timeout=5.0, delay=0.0, until=None, stop_sending_on_data=False,
                 host="127.0.0.1", sock=None, close=True):
    """Sends parts (bytes, or a list of bytes written one by one with `delay`
    seconds between them) and reads until EOF, a reset, until(data) is true,
    or read_timeout seconds after the last write. While sending it keeps
    reading, so a server that answers early is seen early; with
    stop_sending_on_data the remaining parts are not sent once an answer
    has started. Returns a RawResult."""
    if isinstance(parts, (bytes, bytearray)):
        parts = [bytes(parts)]
    own = sock is None
    if own:
        sock = socket.create_connection((host, port), timeout=5.0)
    sock.setblocking(False)
    res = RawResult()
    t0 = time.monotonic()
    alive = True
    try:
        for i, part in enumerate(parts):
            if i and delay:
                # the deliberate slow send: wait `delay`, but watch the socket meanwhile
                end = time.monotonic() + delay
                while alive and time.monotonic() < end:
                    r, _, _ = select.select([sock], [], [], max(0.0, end - time.monotonic()))
                    if r:
                        alive = _read_some(sock, res, t0)
                if not alive:
                    break
                if stop_sending_on_data and res.data:
                    break
            view = memoryview(part)
            while view and alive:
                _, w, _ = select.select([], [sock], [], 5.0)
                if not w:
                    res.send_error = "send blocked for 5 s"
                    break
                try:
                    n = sock.send(view)
                except (BrokenPipeError, ConnectionResetError) as e:
                    res.send_error = e.__class__.__name__
                    alive = False
                    break
                except BlockingIOError:
                    continue
                view = view[n:]
                # read what is already there so a big upload can't deadlock on a full window
                r, _, _ = select.select([sock], [], [], 0)
                if r:
                    alive = _read_some(sock, res, t0)
            if res.send_error:
                break
        deadline = time.monotonic() + read_timeout
        while alive:
            if until is not None and until(res.data):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([sock], [], [], left)
            if r:
                alive = _read_some(sock, res, t0)
    finally:
        res.elapsed = time.monotonic() - t0
        res.t_end = res.elapsed
        if own and close:
            sock.close()
        else:
            sock.setblocking(True)
    return res


class Response:
    def __init__(self, status, reason, version, header_list, body):
        self.status = status
        self.reason = reason
        self.version = version
        self.header_list = header_list
        self.headers = {}
        for k, v in header_list:
            k = k.lower()
            self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return f"Response({self.status} {self.reason}, {self.headers}, {self.body[:300]!r})"


class IncompleteResponse(Exception):
    pass


def _parse_one(data, pos):
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        raise IncompleteResponse("no end of head")
    head = data[pos:end].decode("latin-1")
    lines = head.split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ValueError(f"bad status line {lines[0]!r}")
    hl = []
    for ln in lines[1:]:
        if ":" not in ln:
            raise ValueError(f"bad header line {ln!r}")
        k, v = ln.split(":", 1)
        hl.append((k.strip(), v.strip()))
    r = Response(int(m.group(2)), m.group(3) or "", m.group(1), hl, b"")
    p = end + 4
    if "content-length" in r.headers:
        n = int(r.headers["content-length"])
        if len(data) < p + n:
            raise IncompleteResponse("short body")
        r.body = data[p:p + n]
        return r, p + n
    if r.headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            e = data.find(b"\r\n", p)
            if e < 0:
                raise IncompleteResponse("no chunk size")
            size = int(data[p:e].split(b";")[0], 16)
            p = e + 2
            if size == 0:
                t = data.find(b"\r\n\r\n", p - 2)
                if t < 0:
                    raise IncompleteResponse("no trailer end")
                r.body = body
                return r, t + 4
            if len(data) < p + size + 2:
                raise IncompleteResponse("short chunk")
            body += data[p:p + size]
            p += size + 2
    if r.status in (204, 304) or 100 <= r.status < 200:
        return r, p
    # no framing: the body runs to EOF
    r.body = data[p:]
    return r, len(data)


def parse_responses(data, allow_partial=False):
    """Parses every complete HTTP/1.1 response in data, in order. A trailing
    incomplete one raises unless allow_partial."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            r, pos = _parse_one(data, pos)
        except IncompleteResponse:
            if allow_partial:
                break
            raise
        out.append(r)
    return out


def count_responses(data):
    return len(parse_responses(data, allow_partial=True))


def assert_problem(resp, status):
    """resp is an RFC 9457 problem for status from stageline."""
    assert resp.status == status, resp
    ct = resp.headers.get("content-type", "")
    assert ct.split(";")[0].strip() == PROBLEM_CT, resp
    doc = resp.json()
    assert doc.get("status") == status, doc
    assert isinstance(doc.get("type"), str) and doc["type"].startswith(PROBLEM_TYPE_PREFIX), doc
    assert isinstance(doc.get("title"), str) and doc["title"], doc
    return doc


def assert_refused(res, status):
    """A limit refusal: exactly one response, a problem with status,
    Connection: close, and then the server closed the connection."""
    assert res.eof or res.reset, f"server did not close the connection: {res!r}"
    assert res.data, f"connection closed without any response (wanted {status}): {res!r}"
    resps = parse_responses(res.data)
    assert len(resps) == 1, f"wanted exactly one response, got {resps}"
    r = resps[0]
    doc = assert_problem(r, status)
    assert r.headers.get("connection", "").lower() == "close", r
    assert not res.reset, f"answer arrived but the close was a reset: {res!r}"
    return r, doc
