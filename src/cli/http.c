/* The CLI's HTTP/1.1 client. A command makes a handful of requests, so each
 * one gets its own connection with Connection: close: no pooling, no
 * keep-alive bookkeeping, and a response ends at the latest when the server
 * closes. Responses are framed by Content-Length, chunked encoding or EOF
 * (RFC 9112 §6.3). The parser is incremental and pure so that it can be
 * tested without a socket; the socket code around it only waits, reads and
 * writes, all against one monotonic deadline. No global state. */
#include "cli/http.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/xmalloc.h"

#define MAX_HEAD_BYTES (64 * 1024)
#define MAX_HEADERS 200
#define MAX_BODY_BYTES (64 * 1024 * 1024)
#define MAX_CHUNK_LINE 1024
#define CONNECT_TIMEOUT_MS 10000

static bool fail(struct cli_http_error *e, enum cli_http_error_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static bool fail(struct cli_http_error *e, enum cli_http_error_kind kind, const char *fmt, ...)
{
	e->kind = kind;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return false;
}

/* --- URL ----------------------------------------------------------------- */

void cli_http_url_clear(struct cli_http_url *u)
{
	free(u->host);
	free(u->port);
	free(u->authority);
	free(u->base_path);
	memset(u, 0, sizeof *u);
}

static bool is_port(const char *s, size_t n)
{
	if (n == 0 || n > 5)
		return false;
	unsigned long v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	return v >= 1 && v <= 65535;
}

bool cli_http_url_parse(const char *text, struct cli_http_url *u, struct cli_http_error *e)
{
	memset(u, 0, sizeof *u);
	static const char http[] = "http://", https[] = "https://";
	if (strncasecmp(text, https, sizeof https - 1) == 0)
		return fail(e, CLI_HTTP_ERR_URL,
		            "https:// is not supported yet: use an http:// URL (for example a "
		            "TLS-terminating proxy on localhost)");
	if (strncasecmp(text, http, sizeof http - 1) != 0)
		return fail(e, CLI_HTTP_ERR_URL, "'%s' is not an http:// URL", text);
	const char *a = text + sizeof http - 1;
	for (const char *s = a; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return fail(e, CLI_HTTP_ERR_URL,
			            "the URL contains a space or control character");
	if (strpbrk(a, "?#"))
		return fail(e, CLI_HTTP_ERR_URL, "the URL must not have a query or fragment");
	size_t alen = strcspn(a, "/");
	const char *path = a + alen;
	if (memchr(a, '@', alen))
		return fail(e, CLI_HTTP_ERR_URL,
		            "credentials in the URL are not supported (use --api-key)");
	const char *host, *port = NULL;
	size_t hlen, plen = 0;
	if (alen && a[0] == '[') {
		const char *close = memchr(a, ']', alen);
		if (close == NULL)
			return fail(e, CLI_HTTP_ERR_URL, "unterminated [ in the URL's host");
		host = a + 1;
		hlen = (size_t)(close - host);
		const char *rest = close + 1;
		if (rest < a + alen) {
			if (*rest != ':')
				return fail(e, CLI_HTTP_ERR_URL,
				            "unexpected text after ] in the URL");
			port = rest + 1;
			plen = (size_t)(a + alen - port);
		}
	} else {
		const char *colon = memchr(a, ':', alen);
		host = a;
		hlen = colon ? (size_t)(colon - a) : alen;
		if (colon) {
			port = colon + 1;
			plen = (size_t)(a + alen - port);
		}
	}
	if (hlen == 0)
		return fail(e, CLI_HTTP_ERR_URL, "the URL has no host");
	if (port && !is_port(port, plen))
		return fail(e, CLI_HTTP_ERR_URL, "bad port '%.*s' in the URL", (int)plen, port);
	size_t blen = strlen(path);
	while (blen && path[blen - 1] == '/')
		blen--;
	u->host = xstrndup(host, hlen);
	u->port = port ? xstrndup(port, plen) : xstrdup("80");
	u->authority = xstrndup(a, alen);
	u->base_path = xstrndup(path, blen);
	return true;
}

/* --- request --------------------------------------------------------------- */

static bool is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_token(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!is_tchar(*s))
			return false;
	return true;
}

/* Visible text without CR, LF or other controls (a tab is allowed). */
static bool is_field_value(const char *s)
{
	for (; *s; s++)
		if (((unsigned char)*s < ' ' && *s != '\t') || *s == 0x7f)
			return false;
	return true;
}

bool cli_http_request_format(struct buf *out, const struct cli_http_url *u,
                             const struct cli_http_request *rq, struct cli_http_error *e)
{
	if (!is_token(rq->method))
		return fail(e, CLI_HTTP_ERR_REQUEST, "bad method '%s'", rq->method);
	if (rq->path[0] != '/')
		return fail(e, CLI_HTTP_ERR_REQUEST, "the path must start with /");
	for (const char *s = rq->path; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return fail(e, CLI_HTTP_ERR_REQUEST,
			            "the path contains a space or control");
	for (size_t i = 0; i < rq->nheaders; i++) {
		if (!is_token(rq->headers[i].name))
			return fail(e, CLI_HTTP_ERR_REQUEST, "bad header name '%s'",
			            rq->headers[i].name);
		if (!is_field_value(rq->headers[i].value))
			return fail(e, CLI_HTTP_ERR_REQUEST,
			            "the %s header value contains a control character",
			            rq->headers[i].name);
	}
	if (rq->body && rq->content_type && !is_field_value(rq->content_type))
		return fail(e, CLI_HTTP_ERR_REQUEST, "bad Content-Type");
	buf_printf(out, "%s %s%s HTTP/1.1\r\nHost: %s\r\n", rq->method, u->base_path, rq->path,
	           u->authority);
	for (size_t i = 0; i < rq->nheaders; i++)
		buf_printf(out, "%s: %s\r\n", rq->headers[i].name, rq->headers[i].value);
	if (rq->body) {
		if (rq->content_type)
			buf_printf(out, "Content-Type: %s\r\n", rq->content_type);
		buf_printf(out, "Content-Length: %zu\r\n", rq->body_len);
	}
	buf_adds(out, "Connection: close\r\n\r\n");
	if (rq->body)
		buf_add(out, rq->body, rq->body_len);
	return true;
}

/* --- response parser ------------------------------------------------------- */

enum {
	P_HEAD,
	P_LENGTH, /* Content-Length body */
	P_EOF, /* body until the server closes */
	P_CHUNK_SIZE, /* the next chunk-size line */
	P_CHUNK_DATA,
	P_CHUNK_END, /* the CRLF after a chunk's data */
	P_TRAILERS,
	P_DONE,
};

void cli_http_parser_init(struct cli_http_parser *p, struct cli_http_response *resp,
                          bool head_request)
{
	memset(p, 0, sizeof *p);
	p->state = P_HEAD;
	p->no_body = head_request;
	p->resp = resp;
}

static void headers_free(struct cli_http_response *r)
{
	for (size_t i = 0; i < r->nheaders; i++) {
		free(r->headers[i].name);
		free(r->headers[i].value);
	}
	free(r->headers);
	r->headers = NULL;
	r->nheaders = 0;
	free(r->reason);
	r->reason = NULL;
}

void cli_http_response_clear(struct cli_http_response *r)
{
	headers_free(r);
	buf_free(&r->body);
	r->status = 0;
}

const char *cli_http_response_header(const struct cli_http_response *r, const char *name)
{
	for (size_t i = 0; i < r->nheaders; i++)
		if (strcasecmp(r->headers[i].name, name) == 0)
			return r->headers[i].value;
	return NULL;
}

/* The next line at data[pos..len): its length without CR LF (or LF) in *n
 * and the bytes it spans in *used; false when no LF came yet. */
static bool next_line(const char *data, size_t len, size_t pos, size_t *n, size_t *used)
{
	const char *lf = memchr(data + pos, '\n', len - pos);
	if (lf == NULL)
		return false;
	size_t l = (size_t)(lf - (data + pos));
	*used = l + 1;
	if (l && data[pos + l - 1] == '\r')
		l--;
	*n = l;
	return true;
}

static bool parse_status_line(struct cli_http_response *r, const char *s, size_t n,
                              struct cli_http_error *e)
{
	/* HTTP/1.x SP 3DIGIT [SP reason] */
	if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9' || s[8] != ' ' ||
	    s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9' ||
	    (n > 12 && s[12] != ' '))
		return fail(e, CLI_HTTP_ERR_PROTOCOL, "not an HTTP/1.x status line: '%.*s'",
		            (int)(n > 60 ? 60 : n), s);
	r->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
	r->reason = n > 13 ? xstrndup(s + 13, n - 13) : xstrdup("");
	return true;
}

static bool parse_header_line(struct cli_http_response *r, const char *s, size_t n,
                              struct cli_http_error *e)
{
	if (s[0] == ' ' || s[0] == '\t')
		return fail(e, CLI_HTTP_ERR_PROTOCOL, "folded header line in the response");
	const char *colon = memchr(s, ':', n);
	if (colon == NULL || colon == s)
		return fail(e, CLI_HTTP_ERR_PROTOCOL, "malformed header line in the response");
	for (const char *c = s; c < colon; c++)
		if (!is_tchar(*c))
			return fail(e, CLI_HTTP_ERR_PROTOCOL,
			            "malformed header name in the response");
	if (r->nheaders == MAX_HEADERS)
		return fail(e, CLI_HTTP_ERR_PROTOCOL, "too many header fields in the response");
	const char *v = colon + 1, *end = s + n;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	r->headers = xrealloc(r->headers, (r->nheaders + 1) * sizeof *r->headers);
	r->headers[r->nheaders].name = xstrndup(s, (size_t)(colon - s));
	r->headers[r->nheaders].value = xstrndup(v, (size_t)(end - v));
	r->nheaders++;
	return true;
}

/* Whether the last transfer coding of a Transfer-Encoding value is chunked. */
static bool last_coding_is_chunked(const char *te)
{
	const char *last = strrchr(te, ',');
	last = last ? last + 1 : te;
	while (*last == ' ' || *last == '\t')
		last++;
	size_t n = strcspn(last, " \t;");
	return n == 7 && strncasecmp(last, "chunked", 7) == 0;
}

/* Chooses how the body is framed once the head is in. */
static bool start_body(struct cli_http_parser *p, struct cli_http_error *e)
{
	struct cli_http_response *r = p->resp;
	if (p->no_body || r->status == 204 || r->status == 304) {
		p->state = P_DONE;
		return true;
	}
	const char *te = NULL, *cl = NULL;
	for (size_t i = 0; i < r->nheaders; i++) {
		const char *name = r->headers[i].name, *value = r->headers[i].value;
		if (strcasecmp(name, "Transfer-Encoding") == 0) {
			te = value;
		} else if (strcasecmp(name, "Content-Length") == 0) {
			if (cl && strcmp(cl, value) != 0)
				return fail(e, CLI_HTTP_ERR_PROTOCOL,
				            "conflicting Content-Length headers in the response");
			cl = value;
		}
	}
	if (te) {
		p->state = last_coding_is_chunked(te) ? P_CHUNK_SIZE : P_EOF;
		return true;
	}
	if (cl) {
		uint64_t v = 0;
		if (*cl == '\0')
			return fail(e, CLI_HTTP_ERR_PROTOCOL,
			            "empty Content-Length in the response");
		for (const char *c = cl; *c; c++) {
			if (*c < '0' || *c > '9' || v > MAX_BODY_BYTES)
				return fail(e, CLI_HTTP_ERR_PROTOCOL,
				            "bad Content-Length '%s' in the response", cl);
			v = v * 10 + (uint64_t)(*c - '0');
		}
		if (v > MAX_BODY_BYTES)
			return fail(e, CLI_HTTP_ERR_PROTOCOL, "the response body is too large");
		p->remaining = (size_t)v;
		p->state = v ? P_LENGTH : P_DONE;
		return true;
	}
	p->state = P_EOF;
	return true;
}

static bool body_add(struct cli_http_parser *p, const char *s, size_t n, struct cli_http_error *e)
{
	if (p->resp->body.len + n > MAX_BODY_BYTES)
		return fail(e, CLI_HTTP_ERR_PROTOCOL, "the response body is too large");
	buf_add(&p->resp->body, s, n);
	return true;
}

/* One step: consumes what it can of data[p->pos..len). Returns false on a
 * protocol error; *progress says whether anything moved. */
static bool step(struct cli_http_parser *p, const char *data, size_t len, bool *progress,
                 struct cli_http_error *e)
{
	struct cli_http_response *r = p->resp;
	size_t n, used, avail = len - p->pos;
	const char *s = data + p->pos;
	*progress = false;
	switch (p->state) {
	case P_HEAD:
		if (!next_line(data, len, p->pos, &n, &used)) {
			if (avail > MAX_HEAD_BYTES)
				return fail(e, CLI_HTTP_ERR_PROTOCOL,
				            "the response head is too large");
			return true;
		}
		if (r->reason == NULL) {
			if (!parse_status_line(r, s, n, e))
				return false;
		} else if (n == 0) {
			if (r->status >= 100 && r->status < 200) {
				headers_free(r); /* an interim response: the real one follows */
				r->status = 0;
			} else if (!start_body(p, e)) {
				return false;
			}
		} else if (!parse_header_line(r, s, n, e)) {
			return false;
		}
		p->pos += used;
		break;
	case P_LENGTH:
		n = avail < p->remaining ? avail : p->remaining;
		if (n == 0)
			return true;
		if (!body_add(p, s, n, e))
			return false;
		p->pos += n;
		p->remaining -= n;
		if (p->remaining == 0)
			p->state = P_DONE;
		break;
	case P_EOF:
		if (avail == 0)
			return true;
		if (!body_add(p, s, avail, e))
			return false;
		p->pos += avail;
		break;
	case P_CHUNK_SIZE: {
		if (!next_line(data, len, p->pos, &n, &used)) {
			if (avail > MAX_CHUNK_LINE)
				return fail(e, CLI_HTTP_ERR_PROTOCOL, "bad chunk size line");
			return true;
		}
		uint64_t v = 0;
		size_t i = 0;
		for (; i < n; i++) {
			char c = s[i];
			int d = c >= '0' && c <= '9'   ? c - '0'
			        : c >= 'a' && c <= 'f' ? c - 'a' + 10
			        : c >= 'A' && c <= 'F' ? c - 'A' + 10
			                               : -1;
			if (d < 0)
				break;
			if (v > MAX_BODY_BYTES)
				return fail(e, CLI_HTTP_ERR_PROTOCOL,
				            "the response body is too large");
			v = v * 16 + (uint64_t)d;
		}
		if (i == 0 || (i < n && s[i] != ';' && s[i] != ' ' && s[i] != '\t'))
			return fail(e, CLI_HTTP_ERR_PROTOCOL, "bad chunk size line");
		if (v > MAX_BODY_BYTES)
			return fail(e, CLI_HTTP_ERR_PROTOCOL, "the response body is too large");
		p->pos += used;
		p->remaining = (size_t)v;
		p->state = v ? P_CHUNK_DATA : P_TRAILERS;
		break;
	}
	case P_CHUNK_DATA:
		n = avail < p->remaining ? avail : p->remaining;
		if (n == 0)
			return true;
		if (!body_add(p, s, n, e))
			return false;
		p->pos += n;
		p->remaining -= n;
		if (p->remaining == 0)
			p->state = P_CHUNK_END;
		break;
	case P_CHUNK_END:
		if (!next_line(data, len, p->pos, &n, &used)) {
			if (avail >= 2)
				return fail(e, CLI_HTTP_ERR_PROTOCOL, "no CRLF after a chunk");
			return true;
		}
		if (n != 0)
			return fail(e, CLI_HTTP_ERR_PROTOCOL, "no CRLF after a chunk");
		p->pos += used;
		p->state = P_CHUNK_SIZE;
		break;
	case P_TRAILERS:
		if (!next_line(data, len, p->pos, &n, &used)) {
			if (avail > MAX_HEAD_BYTES)
				return fail(e, CLI_HTTP_ERR_PROTOCOL,
				            "the response trailers are too large");
			return true;
		}
		p->pos += used; /* trailers are read and ignored */
		if (n == 0)
			p->state = P_DONE;
		break;
	default: return true;
	}
	*progress = true;
	return true;
}

enum cli_http_parse cli_http_parser_feed(struct cli_http_parser *p, const char *data, size_t len,
                                         bool eof, struct cli_http_error *e)
{
	bool progress = true;
	if (len)
		p->got_bytes = true;
	while (p->state != P_DONE && progress)
		if (!step(p, data, len, &progress, e))
			return CLI_HTTP_PARSE_ERROR;
	if (p->state == P_DONE)
		return CLI_HTTP_PARSE_DONE;
	if (!eof)
		return CLI_HTTP_PARSE_MORE;
	if (p->state == P_EOF) {
		p->state = P_DONE;
		return CLI_HTTP_PARSE_DONE;
	}
	fail(e, CLI_HTTP_ERR_PROTOCOL,
	     !p->got_bytes ? "the server closed the connection without a response"
	                   : "the server closed the connection before the response was complete");
	return CLI_HTTP_PARSE_ERROR;
}

/* --- I/O --------------------------------------------------------------------- */

static int ms_left(int64_t deadline_us)
{
	int64_t left = deadline_us - clock_mono_us();
	if (left <= 0)
		return 0;
	return (int)((left + 999) / 1000);
}

/* Waits for events on fd until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline_us)
{
	for (;;) {
		int ms = ms_left(deadline_us);
		if (ms == 0)
			return 0;
		struct pollfd pfd = {.fd = fd, .events = events};
		int n = poll(&pfd, 1, ms);
		if (n > 0)
			return 1;
		if (n < 0 && errno != EINTR)
			return -1;
	}
}

static int connect_one(const struct addrinfo *ai, int64_t deadline_us, int *err_out)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
	                ai->ai_protocol);
	if (fd < 0) {
		*err_out = errno;
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return fd;
	if (errno != EINPROGRESS && errno != EINTR) {
		*err_out = errno;
		close(fd);
		return -1;
	}
	int w = wait_fd(fd, POLLOUT, deadline_us);
	if (w <= 0) {
		*err_out = w == 0 ? ETIMEDOUT : errno;
		close(fd);
		return -1;
	}
	int soerr = 0;
	socklen_t slen = sizeof soerr;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) != 0)
		soerr = errno;
	if (soerr) {
		*err_out = soerr;
		close(fd);
		return -1;
	}
	return fd;
}

static int connect_to(const struct cli_http_url *u, int64_t deadline_us, struct cli_http_error *e)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(u->host, u->port, &hints, &res);
	if (rc != 0) {
		fail(e, CLI_HTTP_ERR_CONNECT, "cannot resolve '%s': %s", u->host,
		     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	int fd = -1, last = ECONNREFUSED;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = connect_one(ai, deadline_us, &last);
		if (fd < 0 && last == ETIMEDOUT)
			break;
	}
	freeaddrinfo(res);
	if (fd < 0)
		fail(e, last == ETIMEDOUT ? CLI_HTTP_ERR_TIMEOUT : CLI_HTTP_ERR_CONNECT, "%s",
		     last == ETIMEDOUT ? "timed out connecting" : strerror(last));
	return fd;
}

/* Sends everything; false with e set on an error or the deadline. */
static bool send_all(int fd, const char *p, size_t n, int64_t deadline_us, struct cli_http_error *e)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ok = wait_fd(fd, POLLOUT, deadline_us);
			if (ok == 0)
				return fail(e, CLI_HTTP_ERR_TIMEOUT,
				            "timed out sending the request");
			if (ok < 0)
				return fail(e, CLI_HTTP_ERR_IO, "poll: %s", strerror(errno));
			continue;
		}
		return fail(e, CLI_HTTP_ERR_IO, "cannot send the request: %s", strerror(errno));
	}
	return true;
}

/* One read into in and a feed of the parser with it; the bytes the parser
 * consumed are then dropped from in. 1: something was read (or the peer
 * closed) and *st is the parser's answer; 0: the deadline passed first;
 * -1: an error, in e. */
static int read_some(int fd, struct buf *in, struct cli_http_parser *p, int64_t deadline_us,
                     enum cli_http_parse *st, struct cli_http_error *e)
{
	for (;;) {
		buf_reserve(in, 65536);
		ssize_t r = recv(fd, in->data + in->len, in->cap - in->len - 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int w = wait_fd(fd, POLLIN, deadline_us);
			if (w == 0)
				return 0;
			if (w < 0) {
				fail(e, CLI_HTTP_ERR_IO, "poll: %s", strerror(errno));
				return -1;
			}
			continue;
		}
		if (r < 0) {
			fail(e, CLI_HTTP_ERR_IO, "cannot read the response: %s", strerror(errno));
			return -1;
		}
		in->len += (size_t)r;
		in->data[in->len] = '\0';
		*st = cli_http_parser_feed(p, in->data, in->len, r == 0, e);
		if (*st == CLI_HTTP_PARSE_ERROR)
			return -1;
		/* the parser never looks back: keep only what it has not consumed */
		memmove(in->data, in->data + p->pos, in->len - p->pos);
		in->len -= p->pos;
		in->data[in->len] = '\0';
		p->pos = 0;
		return 1;
	}
}

/* Reads until the parser has the whole response. */
static bool read_response(int fd, struct cli_http_response *resp, bool head, int64_t deadline_us,
                          struct cli_http_error *e)
{
	struct buf in = BUF_INIT;
	struct cli_http_parser p;
	cli_http_parser_init(&p, resp, head);
	enum cli_http_parse st = CLI_HTTP_PARSE_MORE;
	int got = 1;
	while (got > 0 && st != CLI_HTTP_PARSE_DONE)
		got = read_some(fd, &in, &p, deadline_us, &st, e);
	if (got == 0)
		fail(e, CLI_HTTP_ERR_TIMEOUT, "timed out waiting for the response");
	buf_free(&in);
	bool ok = got > 0;
	if (ok && resp->body.data == NULL)
		buf_add(&resp->body, "", 0); /* body.data is never NULL after success */
	return ok;
}

/* Formats rq, connects and sends it: the connected socket, or -1 with e
 * set. A send error is kept in *send_err (and *sent is false): a server
 * may answer and close before it read the whole request (a body too
 * large), and its answer is worth more than our send error. */
static int send_request(const struct cli_http_url *u, const struct cli_http_request *rq,
                        int64_t deadline_us, bool *sent, struct cli_http_error *send_err,
                        struct cli_http_error *e)
{
	struct buf req = BUF_INIT;
	if (!cli_http_request_format(&req, u, rq, e))
		return -1;
	int64_t connect_deadline = clock_mono_us() + (int64_t)CONNECT_TIMEOUT_MS * 1000;
	int fd = connect_to(u, connect_deadline < deadline_us ? connect_deadline : deadline_us, e);
	if (fd >= 0)
		*sent = send_all(fd, req.data, req.len, deadline_us, send_err);
	buf_free(&req);
	return fd;
}

bool cli_http_exchange(const struct cli_http_url *u, const struct cli_http_request *rq,
                       int timeout_ms, struct cli_http_response *resp, struct cli_http_error *e)
{
	int64_t deadline = clock_mono_us() + (int64_t)timeout_ms * 1000;
	struct cli_http_error send_err;
	bool sent = false;
	int fd = send_request(u, rq, deadline, &sent, &send_err, e);
	if (fd < 0)
		return false;
	bool ok = read_response(fd, resp, strcmp(rq->method, "HEAD") == 0, deadline, e);
	close(fd);
	if (!ok && !sent)
		*e = send_err;
	return ok;
}

/* --- streaming ------------------------------------------------------------------ */

void cli_http_stream_close(struct cli_http_stream *s)
{
	if (s->fd >= 0)
		close(s->fd);
	cli_http_response_clear(&s->resp);
	buf_free(&s->in);
	memset(s, 0, sizeof *s);
	s->fd = -1;
}

bool cli_http_stream_open(struct cli_http_stream *s, const struct cli_http_url *u,
                          const struct cli_http_request *rq, int timeout_ms,
                          struct cli_http_error *e)
{
	memset(s, 0, sizeof *s);
	s->fd = -1;
	int64_t deadline = clock_mono_us() + (int64_t)timeout_ms * 1000;
	struct cli_http_error send_err;
	bool sent = false;
	s->fd = send_request(u, rq, deadline, &sent, &send_err, e);
	if (s->fd < 0)
		return false;
	cli_http_parser_init(&s->parser, &s->resp, strcmp(rq->method, "HEAD") == 0);
	enum cli_http_parse st = CLI_HTTP_PARSE_MORE;
	int got = 1;
	/* the head; then, for an answer that is not a stream, the rest */
	while (got > 0 && st != CLI_HTTP_PARSE_DONE &&
	       (s->parser.state == P_HEAD || s->resp.status < 200 || s->resp.status > 299))
		got = read_some(s->fd, &s->in, &s->parser, deadline, &st, e);
	if (got == 0)
		fail(e, CLI_HTTP_ERR_TIMEOUT, "timed out waiting for the response");
	if (got <= 0) {
		if (!sent)
			*e = send_err;
		cli_http_stream_close(s);
		return false;
	}
	s->done = st == CLI_HTTP_PARSE_DONE;
	if (s->resp.body.data == NULL)
		buf_add(&s->resp.body, "", 0);
	return true;
}

enum cli_http_read cli_http_stream_line(struct cli_http_stream *s, int64_t deadline_us,
                                        const char **line, size_t *len, struct cli_http_error *e)
{
	struct buf *b = &s->resp.body;
	/* forget what was handed out */
	if (s->off) {
		memmove(b->data, b->data + s->off, b->len - s->off);
		b->len -= s->off;
		b->data[b->len] = '\0';
		s->off = 0;
	}
	size_t scanned = 0;
	for (;;) {
		for (size_t i = scanned; i < b->len; i++) {
			char c = b->data[i];
			if (c != '\n' && c != '\r')
				continue;
			size_t used = 1;
			if (c == '\r') {
				if (i + 1 == b->len && !s->done)
					break; /* a CR LF may be split across reads */
				if (i + 1 < b->len && b->data[i + 1] == '\n')
					used = 2;
			}
			b->data[i] = '\0';
			*line = b->data;
			*len = i;
			s->off = i + used;
			return CLI_HTTP_READ_LINE;
		}
		scanned = b->len && b->data[b->len - 1] == '\r' ? b->len - 1 : b->len;
		if (s->done) {
			if (b->len == 0)
				return CLI_HTTP_READ_END;
			*line = b->data; /* the last line, without an end */
			*len = b->len;
			s->off = b->len;
			return CLI_HTTP_READ_LINE;
		}
		if (s->fd < 0) {
			fail(e, CLI_HTTP_ERR_IO, "the connection is closed");
			return CLI_HTTP_READ_ERROR;
		}
		enum cli_http_parse st = CLI_HTTP_PARSE_MORE;
		int got = read_some(s->fd, &s->in, &s->parser, deadline_us, &st, e);
		if (got == 0)
			return CLI_HTTP_READ_TIMEOUT;
		if (got < 0)
			return CLI_HTTP_READ_ERROR;
		if (st == CLI_HTTP_PARSE_DONE) {
			s->done = true;
			close(s->fd);
			s->fd = -1;
		}
	}
}
