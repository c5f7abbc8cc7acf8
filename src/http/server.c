/* The hardened HTTP server. libevhtp parses; this file decides. Out of the
 * box libevhtp enforces no header limits or deadlines, closes the socket
 * without a word when it does refuse something, lets chunked win over
 * Content-Length and stalls pipelined requests (TOOLCHAIN.md §8). So:
 *  - per-connection hooks count header fields and bytes (431), check
 *    Content-Length against the body limit before any body byte (413), sum
 *    declared chunk sizes (413) and reject ambiguous framing (400);
 *  - a per-connection timer gives 408 to requests whose headers (or body)
 *    stall, and closes idle keep-alive connections;
 *  - errors libevhtp detects itself are rescued in the connection-fini hook;
 *  - every refusal takes the bufferevent from libevhtp, writes a complete
 *    problem+json response and closes lingeringly, so the client reads the
 *    status instead of a reset.
 * Requests are dispatched to router.c handlers; replies, the access log and
 * the HTTP metrics all pass through here. */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
/* evhtp.h declares `evhtp_res (*evhtp_hook)()`, an old-style prototype. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <evhtp.h>
#pragma GCC diagnostic pop
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "http/problem.h"

#define LINGER_MAX_US (2 * 1000000)
#define LINGER_MAX_DRAIN (1024 * 1024)

enum conn_phase {
	CONN_HEADERS, /* waiting for (the rest of) a request head */
	CONN_BODY, /* reading a body */
	CONN_BUSY, /* a handler owns the request */
	CONN_IDLE, /* keep-alive, between requests */
};

struct http_conn {
	struct http_server *srv;
	evhtp_connection_t *c;
	struct event *timer;
	enum conn_phase phase;
	bool served; /* at least one request answered */
	size_t hdr_bytes;
	size_t hdr_fields;
	uint64_t chunk_total;
	int64_t req_start_us;
	struct http_req *req;
	TAILQ_ENTRY(http_conn) link;
	char peer[64];
	char peer_ip[INET6_ADDRSTRLEN]; /* peer without the port, for auth */
};

struct http_linger {
	struct http_server *srv;
	struct bufferevent *bev;
	int64_t start_us;
	size_t drained;
	TAILQ_ENTRY(http_linger) link;
};

struct http_server {
	struct event_base *base;
	evhtp_t *htp;
	struct router *router;
	struct http_server_opts opts;
	TAILQ_HEAD(, http_conn) conns;
	TAILQ_HEAD(, http_linger) lingers;
	size_t nconns;
	bool listening;
	bool draining;
	http_drained_fn drained_cb;
	void *drained_arg;
	struct event *drain_check;
	char address[128];
	evhtp_connection_t *dispatching; /* a handler runs inside libevhtp's read callback */
};

struct req_str {
	struct req_str *next;
	char s[];
};

struct http_req {
	struct http_server *srv;
	struct http_conn *conn; /* NULL once the connection is gone */
	evhtp_request_t *ev;
	enum http_method method;
	const char *path; /* valid while the request lives */
	struct route_match match;
	struct req_str *strs; /* decoded query values, freed with the request */
	char id[130];
	int64_t start_us;
	int status;
	size_t bytes_out;
	bool replied;
	char *body;
	http_abort_fn on_abort;
	void *abort_arg;
};

/* HTTP metrics: route labels are router templates, never raw paths. */
static void http_metrics_request(const char *method, const char *route, int status, int64_t dur_us)
{
	char cls[4] = {(char)('0' + (status / 100) % 10), 'x', 'x', '\0'};
	metric_inc(metrics_default_get(M_HTTP_REQUESTS_TOTAL), 1, method, route, cls);
	if (status >= 400) {
		char code[16];
		snprintf(code, sizeof code, "%d", status);
		metric_inc(metrics_default_get(M_HTTP_ERRORS_TOTAL), 1, route, code);
	}
	metric_observe(metrics_default_get(M_HTTP_REQUEST_LATENCY_MS), (double)dur_us / 1000.0,
	               route);
}

static void conn_arm(struct http_conn *hc, int64_t ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	evtimer_add(hc->timer, &tv);
}

static void server_maybe_drained(struct http_server *srv);

/* --- Lingering close: answer, half-close, discard input, then free ----- */

static void linger_free(struct http_linger *l)
{
	TAILQ_REMOVE(&l->srv->lingers, l, link);
	bufferevent_free(l->bev);
	struct http_server *srv = l->srv;
	free(l);
	server_maybe_drained(srv);
}

static void linger_read_cb(struct bufferevent *bev, void *arg)
{
	struct http_linger *l = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	l->drained += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	/* A total deadline, so a client dribbling bytes can't keep us forever. */
	if (l->drained > LINGER_MAX_DRAIN || clock_mono_us() - l->start_us >= LINGER_MAX_US)
		linger_free(l);
}

static void linger_write_cb(struct bufferevent *bev, void *arg)
{
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		shutdown(bufferevent_getfd(bev), SHUT_WR);
		bufferevent_disable(bev, EV_WRITE);
	}
}

static void linger_event_cb(struct bufferevent *bev, short what, void *arg)
{
	linger_free(arg);
}

/* Takes over bev (already detached from libevhtp) and answers status. */
static void linger_start(struct http_server *srv, struct bufferevent *bev, int status,
                         const char *limit, const char *detail, const char *peer)
{
	struct http_linger *l = xcalloc(1, sizeof *l);
	l->srv = srv;
	l->bev = bev;
	l->start_us = clock_mono_us();
	TAILQ_INSERT_TAIL(&srv->lingers, l, link);

	char id[ID_UUID_LEN + 1];
	id_uuid7(id);
	/* Problem slugs are kebab-case like every other; the metric label keeps
	 * the snake_case limit name. */
	char slug[32];
	snprintf(slug, sizeof slug, "%s", limit);
	for (char *c = slug; *c; c++)
		if (*c == '_')
			*c = '-';
	char *body = problem_render(status, slug, NULL, detail, NULL, NULL);
	struct evbuffer *in = bufferevent_get_input(bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	evbuffer_add_printf(
	        bufferevent_get_output(bev),
	        "HTTP/1.1 %d %s\r\nContent-Type: " PROBLEM_CONTENT_TYPE
	        "\r\nContent-Length: %zu\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n%s",
	        status, http_status_reason(status), strlen(body), id, body);
	log_info("http.refused", http_status_reason(status), LF_INT("status", status),
	         LF_STR("limit", limit), LF_STR("detail", detail), LF_STR("request_id", id),
	         LF_STR("peer", peer));
	metric_inc(metrics_default_get(M_HTTP_LIMIT_REJECTIONS_TOTAL), 1, limit);
	free(body);

	struct timeval tv = {.tv_sec = LINGER_MAX_US / 1000000};
	bufferevent_setcb(bev, linger_read_cb, linger_write_cb, linger_event_cb, l);
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* --- Connections -------------------------------------------------------- */

static void conn_forget(struct http_conn *hc)
{
	struct http_server *srv = hc->srv;
	if (hc->req)
		hc->req->conn = NULL;
	event_free(hc->timer);
	TAILQ_REMOVE(&srv->conns, hc, link);
	srv->nconns--;
	metric_dec(metrics_default_get(M_HTTP_CONNECTIONS_OPEN), 1);
	free(hc);
}

static void req_finish(struct http_req *req);

/* Refuse from inside a parser hook (technique A): detach the socket from
 * libevhtp, answer on it, and tell the parser to stop. */
static evhtp_res conn_refuse(struct http_conn *hc, int status, const char *limit,
                             const char *detail)
{
	struct http_server *srv = hc->srv;
	char peer[sizeof hc->peer];
	memcpy(peer, hc->peer, sizeof peer);
	struct bufferevent *bev = evhtp_connection_take_ownership(hc->c);
	/* take_ownership unset every hook: connection fini won't run for hc. */
	if (hc->req)
		req_finish(hc->req);
	conn_forget(hc);
	if (bev)
		linger_start(srv, bev, status, limit, detail, peer);
	server_maybe_drained(srv);
	return EVHTP_RES_ERROR;
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_conn *hc = arg;
	evhtp_connection_t *c = hc->c;
	struct http_server *srv = hc->srv;
	bool partial = hc->phase == CONN_BODY ||
	               (c->request && !(c->request->flags & EVHTP_REQ_FLAG_FINISHED)) ||
	               (c->bev && evbuffer_get_length(bufferevent_get_input(c->bev)) > 0);
	if (hc->phase == CONN_BUSY)
		return; /* a handler owns it; not a client stall */
	if (partial) {
		char peer[sizeof hc->peer];
		memcpy(peer, hc->peer, sizeof peer);
		const char *detail =
		        hc->phase == CONN_BODY
		                ? "the request body stalled past the deadline"
		                : "the request head was not complete within the deadline";
		struct bufferevent *bev = evhtp_connection_take_ownership(c);
		conn_forget(hc);
		evhtp_connection_free(c);
		if (bev)
			linger_start(srv, bev, 408, "header_timeout", detail, peer);
	} else {
		/* Idle keep-alive (or never spoke): close quietly. */
		evhtp_connection_free(c); /* runs conn fini, which frees hc */
	}
	server_maybe_drained(srv);
}

static evhtp_res on_headers_start_cb(evhtp_request_t *r, void *arg)
{
	struct http_conn *hc = arg;
	hc->hdr_bytes = 0;
	hc->hdr_fields = 0;
	hc->chunk_total = 0;
	hc->req_start_us = clock_mono_us();
	if (hc->phase == CONN_IDLE) /* a new request on a kept-alive connection */
		conn_arm(hc, hc->srv->opts.header_timeout_ms);
	hc->phase = CONN_HEADERS;
	return EVHTP_RES_OK;
}

static evhtp_res on_header_cb(evhtp_request_t *r, evhtp_header_t *h, void *arg)
{
	struct http_conn *hc = arg;
	hc->hdr_fields++;
	hc->hdr_bytes += h->klen + h->vlen + 4;
	if ((int64_t)hc->hdr_fields > hc->srv->opts.max_header_fields)
		return conn_refuse(hc, 431, "header_fields", "too many header fields");
	if ((int64_t)hc->hdr_bytes > hc->srv->opts.max_header_bytes)
		return conn_refuse(hc, 431, "header_size", "the request head is too large");
	return EVHTP_RES_OK;
}

static evhtp_res on_headers_cb(evhtp_request_t *r, evhtp_headers_t *hdrs, void *arg)
{
	struct http_conn *hc = arg;
	/* Only HTTP/1.0 and 1.1: libevhtp never dispatches a request without a
	 * version (HTTP/0.9 style) and echoes odd ones into the status line. */
	htparser *p = r->conn->parser;
	if (htparser_get_major(p) != 1 || htparser_get_minor(p) > 1)
		return conn_refuse(hc, 505, "version", "only HTTP/1.0 and HTTP/1.1 are supported");
	evhtp_header_t *h;
	int ncl = 0, nte = 0;
	const char *cl = NULL, *te = NULL;
	TAILQ_FOREACH(h, hdrs, next)
	{
		if (h->klen == 14 && strncasecmp(h->key, "content-length", 14) == 0) {
			ncl++;
			cl = h->val;
		} else if (h->klen == 17 && strncasecmp(h->key, "transfer-encoding", 17) == 0) {
			nte++;
			te = h->val;
		}
	}
	if (ncl && nte)
		return conn_refuse(hc, 400, "framing",
		                   "Content-Length and Transfer-Encoding together");
	if (ncl > 1)
		return conn_refuse(hc, 400, "framing", "more than one Content-Length");
	if (nte > 1 || (te && strcasecmp(te, "chunked") != 0))
		return conn_refuse(hc, 400, "framing",
		                   "only Transfer-Encoding: chunked is supported");
	bool body = nte == 1;
	if (cl) {
		char *end;
		errno = 0;
		unsigned long long n = strtoull(cl, &end, 10);
		if (errno || end == cl || *end || cl[0] == '-' || cl[0] == '+')
			return conn_refuse(hc, 400, "framing", "malformed Content-Length");
		if ((int64_t)n > hc->srv->opts.max_body_bytes || n > (unsigned long long)INT64_MAX)
			return conn_refuse(hc, 413, "body_size",
			                   "the request body exceeds the size limit");
		body = n > 0;
	}
	if (body) {
		hc->phase = CONN_BODY;
		conn_arm(hc, hc->srv->opts.header_timeout_ms);
	}
	/* Without a body the deadline keeps running until dispatch: a head
	 * libevhtp accepts but never completes still gets its 408. */
	return EVHTP_RES_OK;
}

static evhtp_res on_new_chunk_cb(evhtp_request_t *r, uint64_t len, void *arg)
{
	struct http_conn *hc = arg;
	hc->chunk_total += len;
	if (len > (uint64_t)hc->srv->opts.max_body_bytes ||
	    hc->chunk_total > (uint64_t)hc->srv->opts.max_body_bytes)
		return conn_refuse(hc, 413, "body_size",
		                   "the chunked request body exceeds the size limit");
	return EVHTP_RES_OK;
}

static evhtp_res on_read_cb(evhtp_request_t *r, struct evbuffer *buf, void *arg)
{
	struct http_conn *hc = arg;
	if (hc->phase == CONN_BODY) /* progress: restart the body stall deadline */
		conn_arm(hc, hc->srv->opts.header_timeout_ms);
	return EVHTP_RES_OK;
}

/* Errors libevhtp found itself end up here (technique B): answer them. */
static int conn_rescue_status(struct http_conn *hc, evhtp_connection_t *c, const char **limit,
                              const char **detail)
{
	*limit = "malformed";
	if (c->request && c->request->status == EVHTP_RES_DATA_TOO_LONG) {
		*limit = "body_size";
		*detail = "the request body exceeds the size limit";
		return 413;
	}
	if (c->parser == NULL)
		return 0;
	htpparse_error e = htparser_get_error(c->parser);
	if (e == htparse_error_none)
		return 0;
	if (e == htparse_error_too_big) {
		if (c->request == NULL || hc->req_start_us == 0) {
			*limit = "uri_size";
			*detail = "the request line is too long";
			return 414;
		}
		evhtp_header_t *last = TAILQ_LAST(c->request->headers_in, evhtp_kvs);
		if (last && last->klen == 14 && strncasecmp(last->key, "content-length", 14) == 0 &&
		    last->val == NULL) {
			*limit = "framing";
			*detail = "malformed Content-Length";
			return 400;
		}
		*limit = "header_size";
		*detail = "a header field is too large";
		return 431;
	}
	if (e == htparse_error_user && !(c->request && c->request->status == EVHTP_RES_FATAL))
		return 0; /* one of our hooks already answered */
	*detail = "malformed request";
	return 400;
}

static evhtp_res on_conn_fini_cb(evhtp_connection_t *c, void *arg)
{
	struct http_conn *hc = arg;
	struct http_server *srv = hc->srv;
	const char *detail = NULL, *limit = NULL;
	int status = c->bev ? conn_rescue_status(hc, c, &limit, &detail) : 0;
	if (status && !(hc->req && hc->req->replied)) {
		char peer[sizeof hc->peer];
		memcpy(peer, hc->peer, sizeof peer);
		if (hc->req)
			req_finish(hc->req);
		struct bufferevent *bev = evhtp_connection_take_ownership(c);
		conn_forget(hc);
		if (bev)
			linger_start(srv, bev, status, limit, detail, peer);
	} else {
		conn_forget(hc);
	}
	server_maybe_drained(srv);
	return EVHTP_RES_OK;
}

static void format_peer(struct sockaddr *sa, char *out, size_t size)
{
	out[0] = '\0';
	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)sa;
		char ip[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
		snprintf(out, size, "%s:%u", ip, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
		char ip[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
		snprintf(out, size, "[%s]:%u", ip, ntohs(in6->sin6_port));
	} else if (sa->sa_family == AF_UNIX) {
		snprintf(out, size, "unix");
	}
}

static void format_peer_ip(struct sockaddr *sa, char *out, size_t size)
{
	out[0] = '\0';
	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)size);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)size);
	else if (sa->sa_family == AF_UNIX)
		snprintf(out, size, "unix");
}

static evhtp_res post_accept_cb(evhtp_connection_t *c, void *arg)
{
	struct http_server *srv = arg;
	if (srv->draining)
		return EVHTP_RES_ERROR;
	struct http_conn *hc = xcalloc(1, sizeof *hc);
	hc->srv = srv;
	hc->c = c;
	hc->phase = CONN_HEADERS;
	hc->timer = evtimer_new(srv->base, conn_timer_cb, hc);
	format_peer(c->saddr, hc->peer, sizeof hc->peer);
	format_peer_ip(c->saddr, hc->peer_ip, sizeof hc->peer_ip);
	TAILQ_INSERT_TAIL(&srv->conns, hc, link);
	srv->nconns++;
	metric_inc(metrics_default_get(M_HTTP_CONNECTIONS_OPEN), 1);
	evhtp_connection_set_hook(c, evhtp_hook_on_headers_start, (evhtp_hook)on_headers_start_cb,
	                          hc);
	evhtp_connection_set_hook(c, evhtp_hook_on_header, (evhtp_hook)on_header_cb, hc);
	evhtp_connection_set_hook(c, evhtp_hook_on_headers, (evhtp_hook)on_headers_cb, hc);
	evhtp_connection_set_hook(c, evhtp_hook_on_new_chunk, (evhtp_hook)on_new_chunk_cb, hc);
	evhtp_connection_set_hook(c, evhtp_hook_on_read, (evhtp_hook)on_read_cb, hc);
	evhtp_connection_set_hook(c, evhtp_hook_on_connection_fini, (evhtp_hook)on_conn_fini_cb,
	                          hc);
	conn_arm(hc, srv->opts.header_timeout_ms);
	return EVHTP_RES_OK;
}

/* --- Requests ----------------------------------------------------------- */

static void access_log(struct http_req *req)
{
	int64_t dur = clock_mono_us() - req->start_us;
	const char *route = req->match.template_;
	if (req->replied) {
		log_info("http.access", "request", LF_STR("method", http_method_name(req->method)),
		         LF_STR("route", route), LF_INT("status", req->status),
		         LF_UINT("bytes", req->bytes_out), LF_INT("duration_us", dur),
		         LF_STR("request_id", req->id),
		         LF_STR("peer", req->conn ? req->conn->peer : ""));
		http_metrics_request(http_method_name(req->method), route, req->status, dur);
	} else {
		log_info("http.access", "client went away before the response",
		         LF_STR("method", http_method_name(req->method)), LF_STR("route", route),
		         LF_INT("status", 499), LF_INT("duration_us", dur),
		         LF_STR("request_id", req->id));
		http_metrics_request(http_method_name(req->method), route, 499, dur);
	}
}

/* Ends a request: tells a pending owner, logs, frees. */
static void req_finish(struct http_req *req)
{
	if (!req->replied && req->on_abort) {
		http_abort_fn fn = req->on_abort;
		req->on_abort = NULL;
		fn(req, req->abort_arg);
	}
	access_log(req);
	struct http_conn *hc = req->conn;
	if (hc && hc->req == req)
		hc->req = NULL;
	if (req->ev)
		evhtp_request_set_hook(req->ev, evhtp_hook_on_request_fini, NULL, NULL);
	route_match_clear(&req->match);
	while (req->strs) {
		struct req_str *n = req->strs->next;
		free(req->strs);
		req->strs = n;
	}
	free(req->body);
	free(req);
}

static evhtp_res on_request_fini_cb(evhtp_request_t *r, void *arg)
{
	struct http_req *req = arg;
	struct http_conn *hc = req->conn;
	req->ev = NULL;
	req_finish(req);
	if (hc) {
		hc->served = true;
		hc->phase = CONN_IDLE;
		hc->req_start_us = 0;
		struct http_server *srv = hc->srv;
		if (srv->draining) {
			/* the reply carried Connection: close; evhtp closes it */
			evtimer_del(hc->timer);
		} else {
			conn_arm(hc, srv->opts.idle_timeout_ms);
		}
		/* libevhtp leaves pipelined requests in the input buffer until
		 * more bytes arrive; poke the read side once the request is gone. */
		if (hc->c->bev && evbuffer_get_length(bufferevent_get_input(hc->c->bev)) > 0)
			bufferevent_trigger(hc->c->bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
	}
	return EVHTP_RES_OK;
}

static enum http_method method_of(evhtp_request_t *r)
{
	switch (evhtp_request_get_method(r)) {
	case htp_method_GET: return HTTP_M_GET;
	case htp_method_HEAD: return HTTP_M_HEAD;
	case htp_method_POST: return HTTP_M_POST;
	case htp_method_PUT: return HTTP_M_PUT;
	case htp_method_DELETE: return HTTP_M_DELETE;
	case htp_method_PATCH: return HTTP_M_PATCH;
	case htp_method_OPTIONS: return HTTP_M_OPTIONS;
	default: return HTTP_M_OTHER;
	}
}

static void dispatch_cb(evhtp_request_t *r, void *arg)
{
	struct http_server *srv = arg;
	/* Our connection state rides on the hooks we installed at accept. */
	struct http_conn *hc =
	        r->conn && r->conn->hooks ? r->conn->hooks->on_connection_fini_arg : NULL;
	struct http_req *req = xcalloc(1, sizeof *req);
	req->srv = srv;
	req->conn = hc;
	req->ev = r;
	req->method = method_of(r);
	req->start_us = hc && hc->req_start_us ? hc->req_start_us : clock_mono_us();
	/* Borrowed from libevhtp: it frees the URI only after our fini hook. */
	req->path = r->uri && r->uri->path && r->uri->path->full ? r->uri->path->full : "/";
	const char *rid = evhtp_header_find(r->headers_in, "X-Request-Id");
	if (rid && id_request_id_valid(rid, strlen(rid)))
		snprintf(req->id, sizeof req->id, "%s", rid);
	else
		id_uuid7_fast(req->id);
	if (hc) {
		hc->req = req;
		hc->phase = CONN_BUSY;
		evtimer_del(hc->timer);
	}
	evhtp_request_set_hook(r, evhtp_hook_on_request_fini, (evhtp_hook)on_request_fini_cb, req);

	router_match(srv->router, req->method, req->path, &req->match);
	switch (req->match.status) {
	case ROUTER_FOUND: {
		/* req may be gone when the handler returns; r->conn is not */
		evhtp_connection_t *c = r->conn;
		srv->dispatching = c;
		((http_handler_fn)req->match.handler)(req, req->match.arg);
		if (srv->dispatching == c)
			srv->dispatching = NULL;
		return;
	}
	case ROUTER_NOT_FOUND:
		http_reply_problem(req, 404, "not-found", NULL, "no resource at this path", NULL);
		return;
	case ROUTER_BAD_PATH:
		http_reply_problem(req, 400, "bad-path", NULL,
		                   "the path has an empty, dot or badly encoded segment", NULL);
		return;
	case ROUTER_METHOD_NOT_ALLOWED: {
		char allow[96];
		http_methods_format(req->match.allow, allow, sizeof allow);
		http_set_header(req, "Allow", allow);
		char *detail = xasprintf("%s is not allowed here; allowed: %s",
		                         http_method_name(req->method), allow);
		http_reply_problem(req, 405, "method-not-allowed", NULL, detail, NULL);
		free(detail);
		return;
	}
	}
}

/* --- Handler API -------------------------------------------------------- */

const char *http_req_id(const struct http_req *req)
{
	return req->id;
}

const char *http_req_route(const struct http_req *req)
{
	return req->match.template_;
}

enum http_method http_req_method(const struct http_req *req)
{
	return req->method;
}

const char *http_req_path(const struct http_req *req)
{
	return req->path;
}

const char *http_req_param(const struct http_req *req, const char *name)
{
	return route_match_param(&req->match, name);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)(c | 0x20);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* libevhtp hands query values over raw: decode %XX and '+' here. A value
 * whose escapes are malformed or decode to NUL is returned as sent, so it
 * fails validation visibly instead of being silently altered. */
const char *http_req_query(const struct http_req *req, const char *name)
{
	if (req->ev == NULL || req->ev->uri == NULL || req->ev->uri->query == NULL)
		return NULL;
	const char *raw = evhtp_kv_find(req->ev->uri->query, name);
	if (raw == NULL || strpbrk(raw, "%+") == NULL)
		return raw;
	size_t n = strlen(raw);
	struct req_str *d = xmalloc(sizeof *d + n + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int h, l;
		if (raw[i] == '+') {
			d->s[o++] = ' ';
		} else if (raw[i] == '%' && (h = hex_digit(raw[i + 1])) >= 0 &&
		           (l = hex_digit(raw[i + 2])) >= 0 && (h || l)) {
			d->s[o++] = (char)(h * 16 + l);
			i += 2;
		} else if (raw[i] == '%') {
			free(d);
			return raw;
		} else {
			d->s[o++] = raw[i];
		}
	}
	d->s[o] = '\0';
	struct http_req *mut = (struct http_req *)req;
	d->next = mut->strs;
	mut->strs = d;
	return d->s;
}

const char *http_req_header(const struct http_req *req, const char *name)
{
	return req->ev ? evhtp_header_find(req->ev->headers_in, name) : NULL;
}

const char *http_req_peer(const struct http_req *req)
{
	return req->conn ? req->conn->peer_ip : "";
}

const char *http_req_body(struct http_req *req, size_t *len)
{
	if (req->body == NULL && req->ev) {
		size_t n = evbuffer_get_length(req->ev->buffer_in);
		req->body = xmalloc(n + 1);
		evbuffer_copyout(req->ev->buffer_in, req->body, n);
		req->body[n] = '\0';
		*len = n;
		return req->body;
	}
	*len = req->body ? strlen(req->body) : 0;
	return req->body ? req->body : "";
}

struct http_server *http_req_server(const struct http_req *req)
{
	return req->srv;
}

void http_req_on_abort(struct http_req *req, http_abort_fn fn, void *arg)
{
	req->on_abort = fn;
	req->abort_arg = arg;
}

void http_set_header(struct http_req *req, const char *name, const char *value)
{
	if (req->ev == NULL)
		return;
	evhtp_headers_add_header(req->ev->headers_out, evhtp_header_new(name, value, 1, 1));
}

/* A header whose name and value outlive the response (literals, or req's
 * own fields): libevhtp serializes headers when the reply is sent and never
 * frees un-heaped strings, so nothing is copied on the hot path. */
static void set_header_ref(struct http_req *req, const char *name, const char *value)
{
	if (req->ev == NULL)
		return;
	evhtp_headers_add_header(req->ev->headers_out, evhtp_header_new(name, value, 0, 0));
}

void http_reply(struct http_req *req, int status, const char *content_type, const void *body,
                size_t len)
{
	if (req->replied || req->ev == NULL)
		return;
	req->replied = true;
	req->status = status;
	req->bytes_out = len;
	req->on_abort = NULL;
	evhtp_request_t *r = req->ev;
	if (content_type)
		set_header_ref(req, "Content-Type", content_type);
	set_header_ref(req, "X-Request-Id", req->id);
	if (req->srv->draining)
		evhtp_request_set_keepalive(r, 0);
	if (len && req->method != HTTP_M_HEAD)
		evbuffer_add(r->buffer_out, body, len);
	evhtp_send_reply(r, (evhtp_res)status);
	/* on_request_fini may already have freed req (client gone): don't touch it */
}

int http_req_take_stream(struct http_req *req, const char *content_type)
{
	return http_req_take_stream_head(req, 200, content_type, "Cache-Control: no-cache\r\n");
}

int http_req_take_stream_head(struct http_req *req, int status, const char *content_type,
                              const char *extra)
{
	if (req->replied || req->ev == NULL || req->conn == NULL || req->conn->c == NULL ||
	    req->conn->c->bev == NULL)
		return -1;
	struct http_conn *hc = req->conn;
	struct http_server *srv = req->srv;
	evhtp_connection_t *c = hc->c;
	char head[1024];
	int n = snprintf(head, sizeof head,
	                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s"
	                 "X-Accel-Buffering: no\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n",
	                 status, status == 206 ? "Partial Content" : "OK", content_type,
	                 extra ? extra : "", req->id);
	if (n < 0 || (size_t)n >= sizeof head)
		return -1;
	/* Our bookkeeping first: the request is answered (a stream), the
	 * connection is no longer the server's. */
	req->replied = true;
	req->status = status;
	req->on_abort = NULL;
	req->bytes_out = (size_t)n;
	/* take_ownership drops our hooks: finish the request and forget the
	 * connection ourselves, then let libevhtp free its structures (its bev
	 * pointer is NULL by then, so the socket survives). */
	struct bufferevent *bev = evhtp_connection_take_ownership(c);
	req->ev = NULL;
	req_finish(req);
	conn_forget(hc);
	/* Inside the read callback libevhtp frees the connection itself once
	 * the handler returns (it sees it no longer owns it); later, nobody
	 * would. */
	if (srv->dispatching == c)
		srv->dispatching = NULL;
	else
		evhtp_connection_free(c);
	struct evbuffer *out = bufferevent_get_output(bev);
	evbuffer_unfreeze(out, 1);
	evbuffer_drain(out, evbuffer_get_length(out));
	int fd = (int)bufferevent_getfd(bev);
	bufferevent_setfd(bev, -1);
	bufferevent_free(bev);
	if (fd < 0)
		return -1;
	/* The head is small and the socket's buffer empty: one write. */
	ssize_t w = write(fd, head, (size_t)n);
	if (w != n) {
		close(fd);
		return -1;
	}
	server_maybe_drained(srv);
	return fd;
}

void http_reply_json(struct http_req *req, int status, json_t *body)
{
	char *s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(body);
	if (s == NULL) {
		http_reply_problem(req, 500, "internal", NULL, "response could not be encoded",
		                   NULL);
		return;
	}
	set_header_ref(req, "Cache-Control", "no-store");
	http_reply(req, status, "application/json", s, strlen(s));
	free(s);
}

void http_reply_problem(struct http_req *req, int status, const char *slug, const char *title,
                        const char *detail, const json_t *extra)
{
	char *s = problem_render(status, slug, title, detail, req->path, extra);
	set_header_ref(req, "Cache-Control", "no-store");
	http_reply(req, status, PROBLEM_CONTENT_TYPE, s, strlen(s));
	free(s);
}

bool http_route(struct router *r, unsigned methods, const char *template_, http_handler_fn fn,
                void *arg)
{
	return router_add(r, methods, template_, (void *)fn, arg);
}

/* --- Server ------------------------------------------------------------- */

struct http_server *http_server_new(struct event_base *base, struct router *router,
                                    const struct http_server_opts *opts)
{
	struct http_server *srv = xcalloc(1, sizeof *srv);
	srv->base = base;
	srv->router = router;
	srv->opts = *opts;
	TAILQ_INIT(&srv->conns);
	TAILQ_INIT(&srv->lingers);
	srv->htp = evhtp_new(base, NULL);
	/* libevhtp's own limit is only a backstop (it closes silently, and is
	 * off by one): our hooks answer 413 before it can trip. */
	evhtp_set_max_body_size(srv->htp, (uint64_t)opts->max_body_bytes + 2);
	evhtp_set_gencb(srv->htp, dispatch_cb, srv);
	evhtp_set_post_accept_cb(srv->htp, post_accept_cb, srv);
	return srv;
}

static bool split_hostport(const char *addr, char *host, size_t hsize, int *port)
{
	const char *colon;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (rb == NULL || rb[1] != ':')
			return false;
		snprintf(host, hsize, "ipv6:%.*s", (int)(rb - addr - 1), addr + 1);
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL)
			return false;
		int hl = (int)(colon - addr);
		if (hl == 9 && strncmp(addr, "localhost", 9) == 0)
			snprintf(host, hsize, "ipv4:127.0.0.1");
		else if (hl == 0)
			snprintf(host, hsize, "ipv4:0.0.0.0");
		else
			snprintf(host, hsize, "ipv4:%.*s", hl, addr);
	}
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (*end || p < 0 || p > 65535 || end == colon + 1)
		return false;
	*port = (int)p;
	return true;
}

bool http_server_listen(struct http_server *srv, const char *addr, char **err)
{
	char host[160];
	int port = 0;
	if (strncmp(addr, "unix:", 5) == 0) {
		snprintf(host, sizeof host, "%s", addr);
		unlink(addr + 5);
	} else if (!split_hostport(addr, host, sizeof host, &port)) {
		*err = xasprintf(
		        "bad listen address '%s' (want host:port, [v6]:port or unix:/path)", addr);
		return false;
	}
	if (evhtp_bind_socket(srv->htp, host, (uint16_t)port, 1024) != 0) {
		*err = xasprintf("cannot listen on %s: %s", addr, strerror(errno));
		return false;
	}
	srv->listening = true;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	evutil_socket_t fd = evconnlistener_get_fd(srv->htp->server);
	if (strncmp(addr, "unix:", 5) != 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		format_peer((struct sockaddr *)&ss, srv->address, sizeof srv->address);
	else
		snprintf(srv->address, sizeof srv->address, "%s", addr);
	return true;
}

const char *http_server_address(const struct http_server *srv)
{
	return srv->address;
}

size_t http_server_connections(const struct http_server *srv)
{
	return srv->nconns;
}

static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_server *srv = arg;
	if (srv->draining && srv->nconns == 0 && TAILQ_EMPTY(&srv->lingers) && srv->drained_cb) {
		http_drained_fn fn = srv->drained_cb;
		srv->drained_cb = NULL;
		fn(srv->drained_arg);
	}
}

/* Defers the drained callback to a fresh loop pass, never inside evhtp. */
static void server_maybe_drained(struct http_server *srv)
{
	if (srv->draining && srv->nconns == 0 && TAILQ_EMPTY(&srv->lingers) && srv->drain_check)
		event_active(srv->drain_check, EV_TIMEOUT, 0);
}

void http_server_drain(struct http_server *srv, http_drained_fn done, void *arg)
{
	srv->draining = true;
	srv->drained_cb = done;
	srv->drained_arg = arg;
	if (srv->drain_check == NULL)
		srv->drain_check = evtimer_new(srv->base, drain_check_cb, srv);
	if (srv->listening) {
		evhtp_unbind_socket(srv->htp);
		srv->listening = false;
	}
	/* Idle connections go now; busy ones close after their reply. */
	struct http_conn *hc, *next;
	for (hc = TAILQ_FIRST(&srv->conns); hc; hc = next) {
		next = TAILQ_NEXT(hc, link);
		if (hc->phase == CONN_IDLE ||
		    (hc->phase == CONN_HEADERS && hc->c->request == NULL &&
		     evbuffer_get_length(bufferevent_get_input(hc->c->bev)) == 0))
			evhtp_connection_free(hc->c);
	}
	server_maybe_drained(srv);
}

void http_server_free(struct http_server *srv)
{
	if (srv == NULL)
		return;
	while (!TAILQ_EMPTY(&srv->conns)) {
		struct http_conn *hc = TAILQ_FIRST(&srv->conns);
		/* A pending request's owner hears on_abort from its fini. */
		evhtp_connection_free(hc->c);
	}
	while (!TAILQ_EMPTY(&srv->lingers)) {
		struct http_linger *l = TAILQ_FIRST(&srv->lingers);
		TAILQ_REMOVE(&srv->lingers, l, link);
		bufferevent_free(l->bev);
		free(l);
	}
	if (srv->listening)
		evhtp_unbind_socket(srv->htp);
	evhtp_free(srv->htp);
	if (srv->drain_check)
		event_free(srv->drain_check);
	free(srv);
}
