/* The HTTP/1.1 client of httpc.h. One bufferevent per connection (a socket
 * one, or bufferevent_openssl for https), all callbacks deferred by libevent
 * (BEV_OPT_DEFER_CALLBACKS) so none runs inside a call of ours. Requests
 * wait in their host's queue until dispatch_cb hands them an idle pooled
 * connection or opens a new one (at most max_conns_per_host). A response is
 * parsed straight out of the bufferevent's input with a small state machine
 * (status line, headers, then a Content-Length, chunked or until-close body);
 * the input is bounded by the read high-water mark, so a paused body callback
 * or a slow disk stops the socket instead of growing memory. Request bodies
 * are copied into the output HTTPC_CHUNK bytes at a time when it drains below
 * a chunk (pread() for files).
 *
 * Lifetimes: nothing is freed while a frame of ours may still use it.
 * Closed connections and finished requests move to a graveyard emptied by
 * gc_cb (a later loop pass) or when the outermost callback returns; every
 * libevent entry point counts c->depth, and httpc_free() inside a callback
 * only marks the client dead. */
#include "httpc/httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/xmalloc.h"

#define HTTPC_CHUNK (256u * 1024) /* request body bytes moved per refill */
#define HTTPC_READ_HWM (512u * 1024) /* the most response bytes buffered unread */
#define HTTPC_LINE_MAX 8192 /* a chunk-size line */
#define HTTPC_DEFAULT_CONNS 8
#define HTTPC_DEFAULT_POOL_IDLE_MS 30000
#define HTTPC_DEFAULT_CONNECT_MS 10000
#define HTTPC_DEFAULT_IO_MS 60000

struct httpc_host;
struct httpc_conn;

enum conn_state { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_CLOSED };

/* Response parsing, in this order; 1xx heads loop back to RS_STATUS. */
enum resp_state {
	RS_STATUS,
	RS_HEADERS,
	RS_BODY_LEN, /* Content-Length: remaining bytes */
	RS_CHUNK_SIZE,
	RS_CHUNK_DATA,
	RS_CHUNK_CRLF,
	RS_TRAILERS,
	RS_BODY_EOF, /* no length: the body ends with the connection */
	RS_DONE,
};

struct httpc_req {
	struct httpc *c;
	TAILQ_ENTRY(httpc_req) link; /* c->reqs or c->dead_reqs */
	TAILQ_ENTRY(httpc_req) qlink; /* host->queue */
	bool queued;
	bool released; /* in c->dead_reqs */
	struct httpc_host *host;
	struct httpc_conn *conn;
	char *method;
	char *url_str;
	struct httpc_url url;
	struct buf head; /* the serialized request head */
	char *body_mem;
	int body_fd;
	uint64_t body_off, body_len, body_sent;
	size_t head_sent; /* head bytes handed to the output (all or none) */
	enum httpc_sink sink;
	size_t max_body;
	int sink_fd;
	httpc_head_cb on_head;
	httpc_body_cb on_body;
	httpc_done_cb done;
	void *arg;
	int64_t connect_timeout_ms, io_timeout_ms;
	bool idempotent, is_head;

	/* Response. */
	enum resp_state rs;
	int status, minor;
	struct httpc_header *hdrs;
	size_t nhdrs;
	size_t head_bytes;
	uint64_t remaining;
	bool conn_close;
	bool err_body; /* non-2xx: the body goes to body, capped */
	struct buf body;
	uint64_t body_bytes;
	bool got_byte;

	bool retried, fresh_only;
	bool paused, in_cb, cancelled, delivering;
	struct event *defer_ev;
	bool failed_early; /* defer_ev delivers err */
	struct httpc_error err;
};

struct httpc_conn {
	struct httpc *c;
	struct httpc_host *h;
	TAILQ_ENTRY(httpc_conn) link; /* h->idle, or c->dead_conns */
	enum conn_state state;
	struct bufferevent *bev;
	SSL *ssl; /* owned by bev */
	struct event *timer;
	struct httpc_req *req;
	unsigned served; /* requests started on it */
	int64_t last_progress_us;
	int connect_errno; /* a synchronous connect failure, reported from timer */
	bool eof; /* EOF seen while the body consumer was paused */
};

struct httpc_host {
	TAILQ_ENTRY(httpc_host) link;
	bool https;
	char name[256];
	unsigned port;
	TAILQ_HEAD(, httpc_conn) idle; /* most recently used first */
	TAILQ_HEAD(, httpc_req) queue;
	unsigned nconns; /* all of this host's open connections */
};

struct httpc {
	struct event_base *base;
	struct httpc_options opt;
	SSL_CTX *ssl_ctx;
	struct evdns_base *dns;
	TAILQ_HEAD(, httpc_host) hosts;
	TAILQ_HEAD(, httpc_req) reqs;
	TAILQ_HEAD(, httpc_req) dead_reqs;
	TAILQ_HEAD(, httpc_conn) dead_conns;
	struct event *dispatch_ev;
	struct event *gc_ev;
	unsigned depth;
	bool dead;
	struct httpc_stats stats;
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_process(struct httpc_conn *conn);
static void req_fail(struct httpc_req *req, enum httpc_error_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Errors. ---------------------------------------------------------------------- */

const char *httpc_error_kind_name(enum httpc_error_kind kind)
{
	switch (kind) {
	case HTTPC_ERR_URL: return "url";
	case HTTPC_ERR_DNS: return "dns";
	case HTTPC_ERR_CONNECT: return "connect";
	case HTTPC_ERR_TLS: return "tls";
	case HTTPC_ERR_TIMEOUT: return "timeout";
	case HTTPC_ERR_IO: return "io";
	case HTTPC_ERR_PROTOCOL: return "protocol";
	case HTTPC_ERR_TOO_LARGE: return "too_large";
	case HTTPC_ERR_BODY: return "body";
	case HTTPC_ERR_SINK: return "sink";
	case HTTPC_ERR_CANCELLED: return "cancelled";
	}
	return "unknown";
}

bool httpc_error_transient(const struct httpc_error *err)
{
	return err && (err->kind == HTTPC_ERR_DNS || err->kind == HTTPC_ERR_CONNECT ||
	               err->kind == HTTPC_ERR_TIMEOUT || err->kind == HTTPC_ERR_IO);
}

static void set_error(struct httpc_error *e, enum httpc_error_kind kind, const char *fmt,
                      va_list ap) __attribute__((format(printf, 3, 0)));

static void set_error(struct httpc_error *e, enum httpc_error_kind kind, const char *fmt,
                      va_list ap)
{
	e->kind = kind;
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
}

/* URLs. ------------------------------------------------------------------------ */

bool httpc_url_parse(const char *url, struct httpc_url *out, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	memset(out, 0, sizeof(*out));
	const char *p;
	if (url && strncasecmp(url, "http://", 7) == 0) {
		p = url + 7;
		out->port = 80;
	} else if (url && strncasecmp(url, "https://", 8) == 0) {
		p = url + 8;
		out->https = true;
		out->port = 443;
	} else {
		*why = "not an http:// or https:// URL";
		return false;
	}
	const char *end = p + strcspn(p, "/?#");
	if (memchr(p, '@', (size_t)(end - p))) {
		*why = "user info in the URL is not supported";
		return false;
	}
	const char *hs = p, *he, *colon = NULL;
	if (*p == '[') {
		he = memchr(p, ']', (size_t)(end - p));
		if (!he) {
			*why = "unterminated IPv6 literal";
			return false;
		}
		hs = p + 1;
		colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
		if (!colon && he + 1 != end) {
			*why = "junk after the IPv6 literal";
			return false;
		}
	} else {
		colon = memchr(p, ':', (size_t)(end - p));
		he = colon ? colon : end;
	}
	size_t hl = (size_t)(he - hs);
	if (hl == 0 || hl >= sizeof(out->host)) {
		*why = hl ? "host name too long" : "empty host";
		return false;
	}
	for (const char *q = hs; q < he; q++) {
		if ((unsigned char)*q <= ' ' || *q == '%' || *q == '\\' || *q == '/' ||
		    (unsigned char)*q >= 0x7f) {
			*why = "invalid character in the host";
			return false;
		}
	}
	memcpy(out->host, hs, hl);
	out->host[hl] = '\0';
	if (colon) {
		char *e;
		errno = 0;
		if (colon + 1 == end) {
			*why = "empty port";
			return false;
		}
		unsigned long port = strtoul(colon + 1, &e, 10);
		if (e != end || port == 0 || port > 65535 || colon[1] == '+' || colon[1] == '-') {
			*why = "invalid port";
			return false;
		}
		out->port = (unsigned)port;
	}
	out->path = *end == '/' ? end : "/";
	if (*end == '?') {
		*why = "a query needs a path ('/?...')";
		return false;
	}
	for (const char *q = out->path; *q; q++) {
		if ((unsigned char)*q <= ' ' || (unsigned char)*q == 0x7f || *q == '#') {
			*why = "the path has a space, control character or fragment";
			return false;
		}
	}
	return true;
}

static bool host_is_ip(const char *host)
{
	unsigned char tmp[16];
	return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* Graveyard and depth. ------------------------------------------------------------ */

static void httpc_destroy(struct httpc *c);

static void gc_schedule(struct httpc *c)
{
	if (!c->dead)
		event_active(c->gc_ev, EV_TIMEOUT, 0);
}

static void req_free_now(struct httpc_req *req)
{
	if (req->defer_ev)
		event_free(req->defer_ev);
	if (req->body_fd >= 0)
		close(req->body_fd);
	for (size_t i = 0; i < req->nhdrs; i++) {
		free((char *)req->hdrs[i].name);
		free((char *)req->hdrs[i].value);
	}
	free(req->hdrs);
	buf_free(&req->body);
	buf_free(&req->head);
	free(req->body_mem);
	free(req->method);
	free(req->url_str);
	free(req);
}

static void conn_free_now(struct httpc_conn *conn)
{
	if (conn->timer)
		event_free(conn->timer);
	if (conn->bev)
		bufferevent_free(conn->bev);
	free(conn);
}

static void gc_run(struct httpc *c)
{
	struct httpc_req *req;
	struct httpc_conn *conn;
	while ((req = TAILQ_FIRST(&c->dead_reqs))) {
		TAILQ_REMOVE(&c->dead_reqs, req, link);
		req_free_now(req);
	}
	while ((conn = TAILQ_FIRST(&c->dead_conns))) {
		TAILQ_REMOVE(&c->dead_conns, conn, link);
		conn_free_now(conn);
	}
}

static void enter(struct httpc *c)
{
	c->depth++;
}

/* Leaves a libevent entry point; false when c is gone. */
static bool leave(struct httpc *c)
{
	c->depth--;
	if (c->dead && c->depth == 0) {
		httpc_destroy(c);
		return false;
	}
	return true;
}

static void gc_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc *c = arg;
	if (c->depth == 0)
		gc_run(c);
}

/* Moves req to the graveyard: it is unlinked from everything. */
static void req_release(struct httpc_req *req)
{
	struct httpc *c = req->c;
	if (req->released)
		return;
	if (req->queued) {
		TAILQ_REMOVE(&req->host->queue, req, qlink);
		req->queued = false;
	}
	if (req->defer_ev)
		event_del(req->defer_ev);
	req->conn = NULL;
	req->released = true;
	TAILQ_REMOVE(&c->reqs, req, link);
	TAILQ_INSERT_TAIL(&c->dead_reqs, req, link);
	gc_schedule(c);
}

/* Closes conn (any request on it is detached, not finished). */
static void conn_close(struct httpc_conn *conn)
{
	struct httpc *c = conn->c;
	if (conn->state == CONN_CLOSED)
		return;
	if (conn->state == CONN_IDLE) {
		TAILQ_REMOVE(&conn->h->idle, conn, link);
		c->stats.idle--;
	}
	if (conn->req && conn->req->conn == conn)
		conn->req->conn = NULL;
	conn->req = NULL;
	conn->state = CONN_CLOSED;
	conn->h->nconns--;
	c->stats.open--;
	if (conn->timer)
		event_del(conn->timer);
	if (conn->bev) {
		/* Freeing inside its own callback is allowed (refcounted). */
		bufferevent_free(conn->bev);
		conn->bev = NULL;
	}
	TAILQ_INSERT_TAIL(&c->dead_conns, conn, link);
	gc_schedule(c);
	if (!c->dead)
		event_active(c->dispatch_ev, EV_TIMEOUT, 0); /* a slot is free */
}

/* Completion. ---------------------------------------------------------------------- */

static void req_deliver(struct httpc_req *req, const struct httpc_error *err)
{
	struct httpc *c = req->c;
	struct httpc_response resp = {
	        .status = req->status,
	        .minor_version = req->minor,
	        .headers = req->hdrs,
	        .nheaders = req->nhdrs,
	        .body = req->body.data ? req->body.data : "",
	        .body_len = req->body.len,
	        .body_bytes = req->body_bytes,
	};
	bool have_resp = req->status > 0 && req->rs > RS_HEADERS;
	req->delivering = true;
	c->depth++;
	req->done(req, err, have_resp ? &resp : NULL, req->arg);
	c->depth--;
	req_release(req);
}

static void req_fail(struct httpc_req *req, enum httpc_error_kind kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_error(&req->err, kind, fmt, ap);
	va_end(ap);
	struct httpc_conn *conn = req->conn;
	if (conn)
		conn_close(conn);
	req_deliver(req, &req->err);
}

static bool conn_reusable(struct httpc_conn *conn)
{
	struct httpc_req *req = conn->req;
	return !req->conn_close && req->body_sent == req->body_len && req->head_sent &&
	       evbuffer_get_length(bufferevent_get_input(conn->bev)) == 0;
}

static void conn_arm_timer(struct httpc_conn *conn, int64_t ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	evtimer_add(conn->timer, &tv);
}

static void conn_go_idle(struct httpc_conn *conn)
{
	struct httpc *c = conn->c;
	conn->req = NULL;
	conn->state = CONN_IDLE;
	TAILQ_INSERT_HEAD(&conn->h->idle, conn, link);
	c->stats.idle++;
	/* Any byte or EOF while idle means the server is done with it. */
	bufferevent_enable(conn->bev, EV_READ);
	conn_arm_timer(conn, c->opt.pool_idle_timeout_ms);
	event_active(c->dispatch_ev, EV_TIMEOUT, 0);
}

static void req_complete(struct httpc_req *req)
{
	struct httpc_conn *conn = req->conn;
	req->rs = RS_DONE;
	if (conn) {
		req->conn = NULL;
		if (conn_reusable(conn))
			conn_go_idle(conn);
		else
			conn_close(conn);
	}
	req_deliver(req, NULL);
}

/* Sending. ------------------------------------------------------------------------- */

/* Tops the output up to two chunks. False (req failed) when the body file
 * cannot be read. */
static bool conn_fill(struct httpc_conn *conn)
{
	struct httpc_req *req = conn->req;
	struct evbuffer *out = bufferevent_get_output(conn->bev);
	if (!req->head_sent) {
		evbuffer_add(out, req->head.data, req->head.len);
		req->head_sent = req->head.len;
	}
	while (req->body_sent < req->body_len && evbuffer_get_length(out) < 2 * HTTPC_CHUNK) {
		uint64_t left = req->body_len - req->body_sent;
		size_t n = left < HTTPC_CHUNK ? (size_t)left : HTTPC_CHUNK;
		if (req->body_mem) {
			evbuffer_add(out, req->body_mem + req->body_sent, n);
			req->body_sent += n;
			continue;
		}
		struct evbuffer_iovec v;
		if (evbuffer_reserve_space(out, (ev_ssize_t)n, &v, 1) < 1) {
			req_fail(req, HTTPC_ERR_BODY, "cannot buffer the request body");
			return false;
		}
		ssize_t r;
		do
			r = pread(req->body_fd, v.iov_base, n,
			          (off_t)(req->body_off + req->body_sent));
		while (r < 0 && errno == EINTR);
		if (r <= 0) {
			req_fail(req, HTTPC_ERR_BODY, "reading the request body failed: %s",
			         r < 0 ? strerror(errno) : "the file ended early");
			return false;
		}
		v.iov_len = (size_t)r;
		evbuffer_commit_space(out, &v, 1);
		req->body_sent += (uint64_t)r;
	}
	return true;
}

static void conn_start_request(struct httpc_conn *conn)
{
	struct httpc *c = conn->c;
	struct httpc_req *req = conn->req;
	if (conn->served++ > 0)
		c->stats.reuses++;
	conn->state = CONN_ACTIVE;
	conn->last_progress_us = clock_mono_us();
	bufferevent_setwatermark(conn->bev, EV_WRITE, HTTPC_CHUNK, 0);
	bufferevent_setwatermark(conn->bev, EV_READ, 0, HTTPC_READ_HWM);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	conn_arm_timer(conn, req->io_timeout_ms);
	if (!conn_fill(conn))
		return;
	/* Bytes that arrived while idle were caught by the idle read callback. */
}

/* Connecting. ---------------------------------------------------------------------- */

static void conn_new(struct httpc_host *h, struct httpc_req *req)
{
	struct httpc *c = req->c;
	struct httpc_conn *conn = xcalloc(1, sizeof(*conn));
	conn->c = c;
	conn->h = h;
	conn->state = CONN_CONNECTING;
	conn->req = req;
	req->conn = conn;
	h->nconns++;
	c->stats.open++;
	c->stats.connects++;
	conn->timer = evtimer_new(c->base, conn_timer_cb, conn);
	int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
	if (h->https) {
		conn->ssl = SSL_new(c->ssl_ctx);
		if (!conn->ssl) {
			conn->connect_errno = ENOMEM;
			conn_arm_timer(conn, 0);
			return;
		}
		bool ip = host_is_ip(h->name);
		if (!ip)
			SSL_set_tlsext_host_name(conn->ssl, h->name);
		if (!c->opt.insecure_skip_verify) {
			if (ip)
				X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(conn->ssl), h->name);
			else
				SSL_set1_host(conn->ssl, h->name);
		}
		conn->bev = bufferevent_openssl_socket_new(c->base, -1, conn->ssl,
		                                           BUFFEREVENT_SSL_CONNECTING, opts);
		if (conn->bev)
			bufferevent_openssl_set_allow_dirty_shutdown(conn->bev, 1);
		else
			SSL_free(conn->ssl);
	} else {
		conn->bev = bufferevent_socket_new(c->base, -1, opts);
	}
	if (!conn->bev) {
		conn->connect_errno = ENOMEM;
		conn_arm_timer(conn, 0);
		return;
	}
	bufferevent_setcb(conn->bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
	conn_arm_timer(conn, req->connect_timeout_ms);

	const char *name = strcmp(h->name, "localhost") == 0 ? "127.0.0.1" : h->name;
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char hostport[300];
	snprintf(hostport, sizeof(hostport), strchr(name, ':') ? "[%s]:%u" : "%.100s:%u", name,
	         h->port);
	int r;
	if (evutil_parse_sockaddr_port(hostport, (struct sockaddr *)&ss, &sslen) == 0) {
		r = bufferevent_socket_connect(conn->bev, (struct sockaddr *)&ss, sslen);
	} else {
		if (!c->dns)
			c->dns = evdns_base_new(c->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
		r = c->dns ? bufferevent_socket_connect_hostname(conn->bev, c->dns, AF_UNSPEC, name,
		                                                 (int)h->port)
		           : -1;
	}
	if (r < 0) {
		/* The event callback may or may not follow: the timer reports it
		 * unless the event callback closes conn first. */
		conn->connect_errno = errno ? errno : ECONNREFUSED;
		conn_arm_timer(conn, 0);
	}
	int fd = bufferevent_getfd(conn->bev);
	if (fd >= 0) {
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
}

static void dispatch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc *c = arg;
	enter(c);
	struct httpc_host *h;
	TAILQ_FOREACH(h, &c->hosts, link)
	{
		struct httpc_req *req;
		while (!c->dead && (req = TAILQ_FIRST(&h->queue))) {
			struct httpc_conn *idle = TAILQ_FIRST(&h->idle);
			if (!req->fresh_only && idle) {
				TAILQ_REMOVE(&h->idle, idle, link);
				c->stats.idle--;
				event_del(idle->timer);
				TAILQ_REMOVE(&h->queue, req, qlink);
				req->queued = false;
				idle->req = req;
				req->conn = idle;
				conn_start_request(idle);
				continue;
			}
			if (h->nconns >= c->opt.max_conns_per_host && idle)
				conn_close(idle); /* a retry wants a fresh connection: make room */
			if (h->nconns >= c->opt.max_conns_per_host)
				break;
			TAILQ_REMOVE(&h->queue, req, qlink);
			req->queued = false;
			conn_new(h, req);
		}
	}
	leave(c);
}

/* Classifies a failure of conn's bufferevent into req's error. */
static void conn_describe_error(struct httpc_conn *conn, short what, int sock_err,
                                enum httpc_error_kind *kind, char *msg, size_t size)
{
	unsigned long ssl_err =
	        conn->bev && conn->ssl ? bufferevent_get_openssl_error(conn->bev) : 0;
	if (conn->state == CONN_CONNECTING) {
		if (conn->bev && bufferevent_socket_get_dns_error(conn->bev)) {
			*kind = HTTPC_ERR_DNS;
			snprintf(msg, size, "cannot resolve '%.100s': %s", conn->h->name,
			         evutil_gai_strerror(bufferevent_socket_get_dns_error(conn->bev)));
			return;
		}
		long vr = conn->ssl ? SSL_get_verify_result(conn->ssl) : X509_V_OK;
		if (conn->ssl && vr != X509_V_OK) {
			*kind = HTTPC_ERR_TLS;
			snprintf(msg, size, "TLS certificate verification failed for '%.100s': %s",
			         conn->h->name, X509_verify_cert_error_string(vr));
			return;
		}
		if (ssl_err) {
			char e[160];
			ERR_error_string_n(ssl_err, e, sizeof(e));
			*kind = HTTPC_ERR_TLS;
			snprintf(msg, size, "TLS handshake with '%.100s' failed: %s", conn->h->name,
			         e);
			return;
		}
		*kind = HTTPC_ERR_CONNECT;
		if (what & BEV_EVENT_EOF)
			snprintf(msg, size, "connection to %.100s:%u closed during %s",
			         conn->h->name, conn->h->port,
			         conn->ssl ? "the TLS handshake" : "connect");
		else
			snprintf(msg, size, "cannot connect to %.100s:%u: %s", conn->h->name,
			         conn->h->port, strerror(sock_err ? sock_err : ECONNREFUSED));
		return;
	}
	*kind = HTTPC_ERR_IO;
	if (ssl_err) {
		char e[160];
		ERR_error_string_n(ssl_err, e, sizeof(e));
		snprintf(msg, size, "TLS error on %.100s:%u: %s", conn->h->name, conn->h->port, e);
	} else if (what & BEV_EVENT_EOF) {
		snprintf(msg, size, "%.100s:%u closed the connection before the response ended",
		         conn->h->name, conn->h->port);
	} else {
		snprintf(msg, size, "connection to %.100s:%u failed: %s", conn->h->name,
		         conn->h->port, strerror(sock_err ? sock_err : EIO));
	}
}

/* Resets req for another try on a fresh connection. */
static void req_requeue(struct httpc_req *req)
{
	struct httpc *c = req->c;
	for (size_t i = 0; i < req->nhdrs; i++) {
		free((char *)req->hdrs[i].name);
		free((char *)req->hdrs[i].value);
	}
	req->nhdrs = 0;
	req->rs = RS_STATUS;
	req->status = req->minor = 0;
	req->head_bytes = 0;
	req->remaining = 0;
	req->conn_close = req->err_body = req->got_byte = false;
	buf_reset(&req->body);
	req->body_bytes = 0;
	req->body_sent = 0;
	req->head_sent = 0;
	req->retried = req->fresh_only = true;
	req->conn = NULL;
	TAILQ_INSERT_HEAD(&req->host->queue, req, qlink);
	req->queued = true;
	c->stats.retries++;
	event_active(c->dispatch_ev, EV_TIMEOUT, 0);
}

static void conn_failed(struct httpc_conn *conn, short what, int sock_err)
{
	struct httpc_req *req = conn->req;
	if (!req) {
		conn_close(conn); /* an idle connection the server ended */
		return;
	}
	if (conn->state == CONN_ACTIVE && req->rs == RS_BODY_EOF && (what & BEV_EVENT_EOF)) {
		req_complete(req);
		return;
	}
	enum httpc_error_kind kind;
	char msg[sizeof(req->err.message)];
	conn_describe_error(conn, what, sock_err, &kind, msg, sizeof(msg));
	if (conn->state == CONN_ACTIVE && conn->served > 1 && !req->got_byte && req->idempotent &&
	    !req->retried) {
		log_debug("httpc.retry_stale", "a pooled connection failed; retrying once",
		          LF_STR("host", conn->h->name), LF_STR("error", msg));
		conn_close(conn);
		req_requeue(req);
		return;
	}
	req_fail(req, kind, "%s", msg);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct httpc_conn *conn = arg;
	struct httpc *c = conn->c;
	int sock_err = EVUTIL_SOCKET_ERROR();
	if (conn->state == CONN_CLOSED)
		return;
	enter(c);
	if (what & BEV_EVENT_CONNECTED) {
		if (conn->state == CONN_CONNECTING && conn->req) {
			event_del(conn->timer);
			conn_start_request(conn);
		}
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		/* Drain what is buffered first: a response may end at EOF. */
		bool active = conn->req && conn->state == CONN_ACTIVE;
		if (active && (what & BEV_EVENT_EOF) && conn->req->paused) {
			conn->eof = true; /* judged after the consumer resumes */
		} else {
			/* A server may answer and close before it read the whole
			 * body (an early 403): the answer can be buffered. */
			if (active)
				conn_process(conn);
			if (conn->state != CONN_CLOSED && !(conn->req && conn->req->paused))
				conn_failed(conn, what, sock_err);
			else if (conn->state != CONN_CLOSED)
				conn->eof = true;
		}
	}
	leave(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc_conn *conn = arg;
	struct httpc *c = conn->c;
	enter(c);
	struct httpc_req *req = conn->req;
	switch (conn->state) {
	case CONN_CONNECTING:
		if (conn->connect_errno) {
			req_fail(req, HTTPC_ERR_CONNECT, "cannot connect to %.100s:%u: %s",
			         conn->h->name, conn->h->port, strerror(conn->connect_errno));
		} else {
			req_fail(req, HTTPC_ERR_TIMEOUT,
			         "connecting to %.100s:%u timed out after %" PRId64 " ms",
			         conn->h->name, conn->h->port, req->connect_timeout_ms);
		}
		break;
	case CONN_ACTIVE: {
		if (req->paused)
			break;
		int64_t idle_ms = (clock_mono_us() - conn->last_progress_us) / 1000;
		if (idle_ms + 1 < req->io_timeout_ms) {
			conn_arm_timer(conn, req->io_timeout_ms - idle_ms);
			break;
		}
		req_fail(req, HTTPC_ERR_TIMEOUT,
		         "no progress from %.100s:%u for %" PRId64 " ms (%s the response)",
		         conn->h->name, conn->h->port, req->io_timeout_ms,
		         req->got_byte ? "during" : "waiting for");
		break;
	}
	case CONN_IDLE: conn_close(conn); break;
	case CONN_CLOSED: break;
	}
	leave(c);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct httpc_conn *conn = arg;
	struct httpc *c = conn->c;
	if (conn->state != CONN_ACTIVE || !conn->req)
		return;
	enter(c);
	conn->last_progress_us = clock_mono_us();
	if (conn->req->rs != RS_DONE)
		(void)conn_fill(conn);
	leave(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct httpc_conn *conn = arg;
	struct httpc *c = conn->c;
	enter(c);
	if (conn->state == CONN_IDLE) {
		/* A server speaks on an idle connection only to end it. */
		conn_close(conn);
	} else if (conn->state == CONN_ACTIVE && conn->req) {
		conn->last_progress_us = clock_mono_us();
		conn_process(conn);
	}
	leave(c);
}

/* Parsing. --------------------------------------------------------------------------- */

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

const char *httpc_response_header(const struct httpc_response *resp, const char *name)
{
	for (size_t i = 0; resp && i < resp->nheaders; i++)
		if (strcasecmp(resp->headers[i].name, name) == 0)
			return resp->headers[i].value;
	return NULL;
}

/* Does a comma-separated header value list contain token (case-insensitive)? */
static bool has_token(const char *list, const char *token)
{
	size_t tl = strlen(token);
	const char *p = list;
	while (p && *p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *e = p + strcspn(p, ",");
		const char *t = e;
		while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
			t--;
		if ((size_t)(t - p) == tl && strncasecmp(p, token, tl) == 0)
			return true;
		p = e;
	}
	return false;
}

/* The end of the head: framing, sink choice, on_head. False when req ended. */
static bool req_head_done(struct httpc_conn *conn)
{
	struct httpc_req *req = conn->req;
	struct httpc *c = req->c;
	struct httpc_response resp = {.status = req->status,
	                              .minor_version = req->minor,
	                              .headers = req->hdrs,
	                              .nheaders = req->nhdrs};
	const char *te = httpc_response_header(&resp, "Transfer-Encoding");
	const char *connection = httpc_response_header(&resp, "Connection");
	req->conn_close = connection ? has_token(connection, "close") : false;
	if (req->minor == 0 && !(connection && has_token(connection, "keep-alive")))
		req->conn_close = true;
	bool chunked = false, have_len = false;
	uint64_t len = 0;
	if (te) {
		if (!has_token(te, "chunked")) {
			req_fail(req, HTTPC_ERR_PROTOCOL, "unsupported Transfer-Encoding '%s'", te);
			return false;
		}
		chunked = true;
	}
	for (size_t i = 0; i < req->nhdrs; i++) {
		if (strcasecmp(req->hdrs[i].name, "Content-Length") != 0)
			continue;
		const char *v = req->hdrs[i].value;
		char *e;
		errno = 0;
		unsigned long long n = strtoull(v, &e, 10);
		if (!*v || *e || errno || v[0] == '-' || v[0] == '+' || (have_len && n != len)) {
			req_fail(req, HTTPC_ERR_PROTOCOL, "invalid Content-Length '%s'", v);
			return false;
		}
		have_len = true;
		len = n;
	}
	bool no_body = req->is_head || req->status == 204 || req->status == 304;
	req->err_body = req->status < 200 || req->status > 299;
	if (!no_body && !req->err_body && req->sink == HTTPC_SINK_BUF && have_len && !chunked &&
	    len > req->max_body) {
		req_fail(req, HTTPC_ERR_TOO_LARGE,
		         "the response body is %" PRIu64 " bytes, more than the %zu allowed", len,
		         req->max_body);
		return false;
	}
	if (no_body) {
		req->rs = RS_DONE;
	} else if (chunked) {
		req->rs = RS_CHUNK_SIZE;
	} else if (have_len) {
		req->remaining = len;
		req->rs = len ? RS_BODY_LEN : RS_DONE;
	} else {
		req->rs = RS_BODY_EOF;
		req->conn_close = true;
	}
	if (req->on_head) {
		resp.body = "";
		req->in_cb = true;
		c->depth++;
		bool go_on = req->on_head(req, &resp, req->arg);
		c->depth--;
		req->in_cb = false;
		if (!go_on)
			req->cancelled = true;
		if (req->cancelled || c->dead) {
			if (req->conn)
				conn_close(req->conn);
			req_release(req);
			return false;
		}
	}
	if (req->rs == RS_DONE) {
		req_complete(req);
		return false;
	}
	return true;
}

/* Hands n body bytes to the sink. False when req ended (error or cancel);
 * *paused when the callback asked to stop. */
static bool req_body(struct httpc_req *req, const char *data, size_t n)
{
	struct httpc *c = req->c;
	req->body_bytes += n;
	if (req->err_body) {
		size_t room = HTTPC_ERROR_BODY_MAX - req->body.len;
		buf_add(&req->body, data, n < room ? n : room);
		return true;
	}
	switch (req->sink) {
	case HTTPC_SINK_BUF:
		if (req->body.len + n > req->max_body) {
			req_fail(req, HTTPC_ERR_TOO_LARGE,
			         "the response body is more than the %zu bytes allowed",
			         req->max_body);
			return false;
		}
		buf_add(&req->body, data, n);
		return true;
	case HTTPC_SINK_FD:
		while (n > 0) {
			ssize_t w = write(req->sink_fd, data, n);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				req_fail(req, HTTPC_ERR_SINK,
				         "writing the response body failed: %s", strerror(errno));
				return false;
			}
			data += w;
			n -= (size_t)w;
		}
		return true;
	case HTTPC_SINK_CB: {
		req->in_cb = true;
		c->depth++;
		bool go_on = req->on_body(req, data, n, req->arg);
		c->depth--;
		req->in_cb = false;
		if (req->cancelled || c->dead) {
			if (req->conn)
				conn_close(req->conn);
			req_release(req);
			return false;
		}
		if (!go_on)
			req->paused = true;
		return true;
	}
	case HTTPC_SINK_DISCARD: return true;
	}
	return true;
}

/* Moves up to max bytes of input into the sink. False when req ended. */
static bool conn_body_from_input(struct httpc_conn *conn, uint64_t max, uint64_t *moved)
{
	struct httpc_req *req = conn->req;
	struct evbuffer *in = bufferevent_get_input(conn->bev);
	*moved = 0;
	while (*moved < max && !req->paused) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			break;
		size_t n = v.iov_len;
		if (n > max - *moved)
			n = (size_t)(max - *moved);
		if (n > HTTPC_CHUNK)
			n = HTTPC_CHUNK;
		struct bufferevent *bev = conn->bev;
		bufferevent_incref(bev);
		bool ok = req_body(req, v.iov_base, n);
		if (ok)
			evbuffer_drain(in, n);
		bufferevent_decref(bev);
		if (!ok)
			return false;
		*moved += n;
	}
	return true;
}

/* Parses what the input holds. Stops when it needs more bytes, when req
 * ended, or when the body consumer paused. */
static void conn_process(struct httpc_conn *conn)
{
	struct httpc_req *req = conn->req;
	struct httpc *c = conn->c;
	struct evbuffer *in = bufferevent_get_input(conn->bev);
	if (evbuffer_get_length(in) > 0)
		req->got_byte = true;
	while (conn->state == CONN_ACTIVE && conn->req == req && !req->paused && !c->dead) {
		size_t n = 0;
		char *line;
		uint64_t moved;
		switch (req->rs) {
		case RS_STATUS:
		case RS_HEADERS:
		case RS_TRAILERS:
			line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
			if (!line) {
				if (evbuffer_get_length(in) + req->head_bytes >
				    HTTPC_HEADER_BYTES_MAX)
					req_fail(req, HTTPC_ERR_PROTOCOL,
					         "the response head is over %u bytes",
					         HTTPC_HEADER_BYTES_MAX);
				return;
			}
			req->head_bytes += n + 2;
			if (req->head_bytes > HTTPC_HEADER_BYTES_MAX) {
				free(line);
				req_fail(req, HTTPC_ERR_PROTOCOL,
				         "the response head is over %u bytes",
				         HTTPC_HEADER_BYTES_MAX);
				return;
			}
			if (req->rs == RS_STATUS) {
				int major = 0, minor = 0, status = 0, used = 0;
				if (sscanf(line, "HTTP/%1d.%1d %3d%n", &major, &minor, &status,
				           &used) != 3 ||
				    major != 1 || status < 100 || status > 599 ||
				    (line[used] != '\0' && line[used] != ' ')) {
					req_fail(req, HTTPC_ERR_PROTOCOL,
					         "not an HTTP/1.x status line: '%.60s'", line);
					free(line);
					return;
				}
				free(line);
				req->status = status;
				req->minor = minor;
				req->rs = RS_HEADERS;
				continue;
			}
			if (n == 0) {
				free(line);
				if (req->rs == RS_TRAILERS) {
					req_complete(req);
					return;
				}
				if (req->status >= 100 && req->status < 200) {
					/* An interim response: the real one follows. */
					for (size_t i = 0; i < req->nhdrs; i++) {
						free((char *)req->hdrs[i].name);
						free((char *)req->hdrs[i].value);
					}
					req->nhdrs = 0;
					req->rs = RS_STATUS;
					continue;
				}
				if (!req_head_done(conn))
					return;
				continue;
			}
			if (req->rs == RS_TRAILERS) {
				free(line);
				continue;
			}
			char *colon = strchr(line, ':');
			if (!colon || colon == line || line[0] == ' ' || line[0] == '\t' ||
			    req->nhdrs >= HTTPC_HEADERS_MAX) {
				req_fail(req, HTTPC_ERR_PROTOCOL,
				         req->nhdrs >= HTTPC_HEADERS_MAX
				                 ? "more than %d response headers"
				                 : "malformed response header line",
				         HTTPC_HEADERS_MAX);
				free(line);
				return;
			}
			*colon = '\0';
			if (!req->hdrs)
				req->hdrs = xcalloc(HTTPC_HEADERS_MAX, sizeof(*req->hdrs));
			req->hdrs[req->nhdrs].name = xstrdup(trim(line));
			req->hdrs[req->nhdrs].value = xstrdup(trim(colon + 1));
			req->nhdrs++;
			free(line);
			continue;
		case RS_BODY_LEN:
			if (!conn_body_from_input(conn, req->remaining, &moved))
				return;
			req->remaining -= moved;
			if (req->remaining == 0) {
				req_complete(req);
				return;
			}
			if (moved == 0)
				return;
			continue;
		case RS_CHUNK_SIZE: {
			struct evbuffer_ptr eol =
			        evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF);
			if (eol.pos < 0) {
				if (evbuffer_get_length(in) > HTTPC_LINE_MAX)
					req_fail(req, HTTPC_ERR_PROTOCOL,
					         "chunk-size line too long");
				return;
			}
			line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
			char *e;
			errno = 0;
			unsigned long long size = strtoull(line, &e, 16);
			bool bad = e == line || errno || line[0] == '-' || line[0] == '+' ||
			           (*e && *e != ';' && *e != ' ' && *e != '\t');
			free(line);
			if (bad) {
				req_fail(req, HTTPC_ERR_PROTOCOL, "invalid chunk size");
				return;
			}
			if (size == 0) {
				req->rs = RS_TRAILERS;
			} else {
				req->remaining = size;
				req->rs = RS_CHUNK_DATA;
			}
			continue;
		}
		case RS_CHUNK_DATA:
			if (!conn_body_from_input(conn, req->remaining, &moved))
				return;
			req->remaining -= moved;
			if (req->remaining == 0)
				req->rs = RS_CHUNK_CRLF;
			else if (moved == 0)
				return;
			continue;
		case RS_CHUNK_CRLF:
			if (evbuffer_get_length(in) < 2)
				return;
			{
				char crlf[2];
				evbuffer_remove(in, crlf, 2);
				if (crlf[0] != '\r' || crlf[1] != '\n') {
					req_fail(req, HTTPC_ERR_PROTOCOL,
					         "chunk data not followed by CRLF");
					return;
				}
			}
			req->rs = RS_CHUNK_SIZE;
			continue;
		case RS_BODY_EOF:
			if (!conn_body_from_input(conn, UINT64_MAX, &moved))
				return;
			if (moved == 0)
				return;
			continue;
		case RS_DONE: return;
		}
	}
	if (conn->state == CONN_ACTIVE && conn->req == req && req->paused) {
		bufferevent_disable(conn->bev, EV_READ);
		event_del(conn->timer);
	}
}

/* The request's own deferred event: an early failure, or a resume. */
static void req_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc_req *req = arg;
	struct httpc *c = req->c;
	enter(c);
	if (req->failed_early) {
		req_deliver(req, &req->err);
	} else if (!req->paused && req->conn && req->conn->state == CONN_ACTIVE) {
		struct httpc_conn *conn = req->conn;
		conn->last_progress_us = clock_mono_us();
		bufferevent_enable(conn->bev, EV_READ);
		conn_arm_timer(conn, req->io_timeout_ms);
		conn_process(conn);
		/* An EOF that arrived while paused: an until-close body ends, any
		 * other unfinished response broke. */
		if (conn->eof && conn->state == CONN_ACTIVE && conn->req == req && !req->paused)
			conn_failed(conn, BEV_EVENT_EOF, 0);
	}
	leave(c);
}

/* Public API. ----------------------------------------------------------------------- */

static bool header_ok(const char *s)
{
	return s && !strpbrk(s, "\r\n");
}

struct httpc_req *httpc_request(struct httpc *c, const struct httpc_request *rq, httpc_done_cb done,
                                void *arg)
{
	struct httpc_req *req = xcalloc(1, sizeof(*req));
	req->c = c;
	req->done = done;
	req->arg = arg;
	req->body_fd = -1;
	req->sink_fd = rq->sink_fd;
	req->sink = rq->sink;
	req->max_body = rq->max_body;
	req->on_head = rq->on_head;
	req->on_body = rq->on_body;
	req->method = xstrdup(rq->method ? rq->method : "GET");
	req->url_str = xstrdup(rq->url ? rq->url : "");
	req->connect_timeout_ms =
	        rq->connect_timeout_ms > 0 ? rq->connect_timeout_ms : c->opt.connect_timeout_ms;
	req->io_timeout_ms = rq->io_timeout_ms > 0 ? rq->io_timeout_ms : c->opt.io_timeout_ms;
	req->is_head = strcmp(req->method, "HEAD") == 0;
	req->idempotent = req->is_head || strcmp(req->method, "GET") == 0 ||
	                  strcmp(req->method, "PUT") == 0 || strcmp(req->method, "DELETE") == 0 ||
	                  strcmp(req->method, "OPTIONS") == 0;
	req->defer_ev = event_new(c->base, -1, 0, req_defer_cb, req);
	TAILQ_INSERT_TAIL(&c->reqs, req, link);

	const char *why = NULL;
	bool ok = httpc_url_parse(req->url_str, &req->url, &why);
	if (!ok) {
		snprintf(req->err.message, sizeof(req->err.message), "bad URL: %s", why);
	} else if (!rq->method || !rq->method[0] || strpbrk(rq->method, " \r\n\t")) {
		ok = false;
		snprintf(req->err.message, sizeof(req->err.message), "bad method");
	} else if (rq->sink == HTTPC_SINK_FD && rq->sink_fd < 0) {
		ok = false;
		snprintf(req->err.message, sizeof(req->err.message), "no sink_fd");
	} else if (rq->sink == HTTPC_SINK_CB && !rq->on_body) {
		ok = false;
		snprintf(req->err.message, sizeof(req->err.message), "no on_body");
	}
	for (size_t i = 0; ok && i < rq->nheaders; i++) {
		if (!header_ok(rq->headers[i].name) || !header_ok(rq->headers[i].value) ||
		    !rq->headers[i].name[0] || strchr(rq->headers[i].name, ':')) {
			ok = false;
			snprintf(req->err.message, sizeof(req->err.message),
			         "header %zu has a CR, LF or bad name", i);
		}
	}
	if (ok && rq->body_fd >= 0) {
		req->body_fd = fcntl(rq->body_fd, F_DUPFD_CLOEXEC, 0);
		if (req->body_fd < 0) {
			ok = false;
			snprintf(req->err.message, sizeof(req->err.message),
			         "cannot dup the body fd: %s", strerror(errno));
		}
		req->body_off = rq->body_offset;
		req->body_len = rq->body_fd_len;
	} else if (ok && rq->body_len > 0) {
		req->body_mem = xmalloc(rq->body_len);
		memcpy(req->body_mem, rq->body, rq->body_len);
		req->body_len = rq->body_len;
	}
	if (!ok) {
		req->err.kind = HTTPC_ERR_URL;
		req->failed_early = true;
		event_active(req->defer_ev, EV_TIMEOUT, 0);
		return req;
	}

	/* The head. */
	struct buf *h = &req->head;
	buf_printf(h, "%s %s HTTP/1.1\r\n", req->method, req->url.path);
	bool have_host = false;
	for (size_t i = 0; i < rq->nheaders; i++) {
		const char *name = rq->headers[i].name;
		if (strcasecmp(name, "Content-Length") == 0 ||
		    strcasecmp(name, "Transfer-Encoding") == 0)
			continue;
		if (strcasecmp(name, "Host") == 0)
			have_host = true;
		buf_printf(h, "%s: %s\r\n", name, rq->headers[i].value);
	}
	if (!have_host) {
		bool def = req->url.port == (req->url.https ? 443u : 80u);
		bool v6 = strchr(req->url.host, ':') != NULL;
		buf_printf(h, "Host: %s%s%s", v6 ? "[" : "", req->url.host, v6 ? "]" : "");
		if (!def)
			buf_printf(h, ":%u", req->url.port);
		buf_adds(h, "\r\n");
	}
	bool body_method = strcmp(req->method, "PUT") == 0 || strcmp(req->method, "POST") == 0 ||
	                   strcmp(req->method, "PATCH") == 0;
	if (req->body_len > 0 || body_method)
		buf_printf(h, "Content-Length: %" PRIu64 "\r\n", req->body_len);
	buf_adds(h, "\r\n");

	/* Its host. */
	struct httpc_host *host;
	TAILQ_FOREACH(host, &c->hosts, link)
	{
		if (host->https == req->url.https && host->port == req->url.port &&
		    strcasecmp(host->name, req->url.host) == 0)
			break;
	}
	if (!host) {
		host = xcalloc(1, sizeof(*host));
		host->https = req->url.https;
		host->port = req->url.port;
		snprintf(host->name, sizeof(host->name), "%s", req->url.host);
		TAILQ_INIT(&host->idle);
		TAILQ_INIT(&host->queue);
		TAILQ_INSERT_TAIL(&c->hosts, host, link);
	}
	if (host->https && !c->ssl_ctx) {
		req->err.kind = HTTPC_ERR_TLS;
		snprintf(req->err.message, sizeof(req->err.message), "no TLS context");
		req->failed_early = true;
		event_active(req->defer_ev, EV_TIMEOUT, 0);
		return req;
	}
	req->host = host;
	TAILQ_INSERT_TAIL(&host->queue, req, qlink);
	req->queued = true;
	event_active(c->dispatch_ev, EV_TIMEOUT, 0);
	return req;
}

void httpc_req_cancel(struct httpc_req *req)
{
	if (!req || req->delivering || req->released)
		return;
	if (req->in_cb) {
		req->cancelled = true; /* the frame that called back finishes it */
		return;
	}
	if (req->conn)
		conn_close(req->conn);
	req_release(req);
}

void httpc_req_resume(struct httpc_req *req)
{
	if (!req || !req->paused || req->released)
		return;
	req->paused = false;
	event_active(req->defer_ev, EV_TIMEOUT, 0);
}

void httpc_get_stats(const struct httpc *c, struct httpc_stats *out)
{
	*out = c->stats;
}

struct httpc *httpc_new(struct event_base *base, const struct httpc_options *opts, char **err)
{
	struct httpc *c = xcalloc(1, sizeof(*c));
	c->base = base;
	if (opts)
		c->opt = *opts;
	if (!c->opt.max_conns_per_host)
		c->opt.max_conns_per_host = HTTPC_DEFAULT_CONNS;
	if (c->opt.pool_idle_timeout_ms <= 0)
		c->opt.pool_idle_timeout_ms = HTTPC_DEFAULT_POOL_IDLE_MS;
	if (c->opt.connect_timeout_ms <= 0)
		c->opt.connect_timeout_ms = HTTPC_DEFAULT_CONNECT_MS;
	if (c->opt.io_timeout_ms <= 0)
		c->opt.io_timeout_ms = HTTPC_DEFAULT_IO_MS;
	c->opt.ca_file = NULL; /* not kept: only read below */

	c->ssl_ctx = SSL_CTX_new(TLS_client_method());
	if (!c->ssl_ctx) {
		*err = xstrdup("httpc: cannot create the TLS context");
		free(c);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(c->ssl_ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(c->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(c->ssl_ctx,
	                   c->opt.insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
	const char *ca = opts ? opts->ca_file : NULL;
	int ok = ca && ca[0] ? SSL_CTX_load_verify_locations(c->ssl_ctx, ca, NULL)
	                     : SSL_CTX_set_default_verify_paths(c->ssl_ctx);
	if (ok != 1) {
		char e[160] = "";
		ERR_error_string_n(ERR_get_error(), e, sizeof(e));
		*err = xasprintf("httpc: cannot load the CA %s '%s': %s", ca ? "file" : "store",
		                 ca ? ca : "default", e);
		ERR_clear_error();
		SSL_CTX_free(c->ssl_ctx);
		free(c);
		return NULL;
	}
	TAILQ_INIT(&c->hosts);
	TAILQ_INIT(&c->reqs);
	TAILQ_INIT(&c->dead_reqs);
	TAILQ_INIT(&c->dead_conns);
	c->dispatch_ev = event_new(base, -1, 0, dispatch_cb, c);
	c->gc_ev = event_new(base, -1, 0, gc_cb, c);
	return c;
}

static void httpc_destroy(struct httpc *c)
{
	struct httpc_req *req;
	while ((req = TAILQ_FIRST(&c->reqs))) {
		req->in_cb = false;
		req->delivering = false;
		if (req->conn)
			conn_close(req->conn);
		req_release(req);
	}
	struct httpc_host *h;
	while ((h = TAILQ_FIRST(&c->hosts))) {
		struct httpc_conn *conn;
		while ((conn = TAILQ_FIRST(&h->idle)))
			conn_close(conn);
		TAILQ_REMOVE(&c->hosts, h, link);
		free(h);
	}
	gc_run(c);
	if (c->dns)
		evdns_base_free(c->dns, 0);
	event_free(c->dispatch_ev);
	event_free(c->gc_ev);
	SSL_CTX_free(c->ssl_ctx);
	free(c);
}

void httpc_free(struct httpc *c)
{
	if (!c)
		return;
	if (c->depth == 0) {
		httpc_destroy(c);
		return;
	}
	/* Inside a callback: nothing fires any more; the frames unwind and the
	 * outermost one destroys c (leave()). */
	c->dead = true;
	struct httpc_req *req, *next;
	for (req = TAILQ_FIRST(&c->reqs); req; req = next) {
		next = TAILQ_NEXT(req, link);
		if (req->in_cb || req->delivering) {
			req->cancelled = true;
			continue;
		}
		if (req->conn)
			conn_close(req->conn);
		req_release(req);
	}
}
