/* Unit tests for httpc/httpc.c against an in-process HTTP/1.1 server on
 * 127.0.0.1, on the same event_base (plain libevent listeners and
 * bufferevents, TLS through bufferevent_openssl with a certificate made here
 * with the OpenSSL API). The server counts accepts, hashes request bodies and
 * has one path per behaviour: keep-alive, Connection: close, chunked, large
 * Content-Length bodies, until-EOF bodies, a silent path (timeouts, cancel),
 * a path that drops the second request on a connection (stale retries), and
 * one that closes the connection soon after answering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/buf.h"
#include "core/xmalloc.h"
#include "httpc/httpc.h"

/* The server. -------------------------------------------------------------------- */

struct srv {
	struct event_base *base;
	struct evconnlistener *lis;
	SSL_CTX *ssl_ctx; /* NULL: plain http */
	unsigned port;
	unsigned accepts;
	unsigned requests;
};

struct sconn {
	struct srv *srv;
	struct bufferevent *bev;
	bool in_body;
	uint64_t body_left;
	EVP_MD_CTX *md;
	uint64_t body_len;
	char path[256];
	char method[16];
	unsigned nreq; /* requests on this connection */
	bool close_after;
	struct event *later;
};

static void sconn_free(struct sconn *sc)
{
	if (sc->later)
		event_free(sc->later);
	if (sc->md)
		EVP_MD_CTX_free(sc->md);
	bufferevent_free(sc->bev);
	free(sc);
}

static void sconn_close_later_cb(evutil_socket_t fd, short what, void *arg)
{
	sconn_free(arg);
}

static void sconn_write_cb(struct bufferevent *bev, void *arg)
{
	struct sconn *sc = arg;
	if (sc->close_after && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		sconn_free(sc);
}

static void respond(struct sconn *sc, int status, const char *extra, const char *body, size_t n)
{
	struct evbuffer *out = bufferevent_get_output(sc->bev);
	evbuffer_add_printf(out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n", status, n,
	                    extra ? extra : "");
	if (strcmp(sc->method, "HEAD") != 0)
		evbuffer_add(out, body, n);
}

/* False when sc was freed. */
static bool handle(struct sconn *sc)
{
	struct srv *srv = sc->srv;
	struct evbuffer *out = bufferevent_get_output(sc->bev);
	srv->requests++;
	sc->nreq++;
	const char *p = sc->path;
	if (strcmp(p, "/hello") == 0) {
		respond(sc, 200, "X-Test: yes\r\n", "hello", 5);
	} else if (strcmp(p, "/close") == 0) {
		respond(sc, 200, "Connection: close\r\n", "bye", 3);
		sc->close_after = true;
	} else if (strcmp(p, "/chunked") == 0) {
		evbuffer_add_printf(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
		                         "X-Test: chunky\r\n\r\n"
		                         "3\r\nabc\r\n5;ext=1\r\ndefgh\r\n1\r\ni\r\n0\r\n"
		                         "Trailer-X: 1\r\n\r\n");
	} else if (strncmp(p, "/big?n=", 7) == 0) {
		size_t n = strtoul(p + 7, NULL, 10);
		char *b = xmalloc(n + 1);
		for (size_t i = 0; i < n; i++)
			b[i] = (char)('a' + i % 26);
		respond(sc, 200, NULL, b, n);
		free(b);
	} else if (strcmp(p, "/upload") == 0) {
		unsigned char d[32];
		unsigned int dl = 0;
		EVP_DigestFinal_ex(sc->md, d, &dl);
		char hex[80];
		for (int i = 0; i < 32; i++)
			snprintf(hex + 2 * i, 3, "%02x", d[i]);
		char body[128];
		int n = snprintf(body, sizeof(body), "%s %llu", hex,
		                 (unsigned long long)sc->body_len);
		respond(sc, 200, NULL, body, (size_t)n);
	} else if (strcmp(p, "/slow") == 0) {
		/* never answers */
	} else if (strcmp(p, "/drop-second") == 0) {
		if (sc->nreq >= 2) {
			sconn_free(sc);
			return false;
		}
		respond(sc, 200, NULL, "first", 5);
	} else if (strcmp(p, "/close-soon") == 0) {
		respond(sc, 200, NULL, "soon", 4);
		static const struct timeval tv = {0, 30000};
		sc->later = evtimer_new(srv->base, sconn_close_later_cb, sc);
		evtimer_add(sc->later, &tv);
	} else if (strcmp(p, "/eof") == 0) {
		evbuffer_add_printf(out, "HTTP/1.1 200 OK\r\n\r\nuntil-the-end");
		sc->close_after = true;
	} else if (strcmp(p, "/continue") == 0) {
		evbuffer_add_printf(out, "HTTP/1.1 100 Continue\r\n\r\n");
		respond(sc, 201, NULL, "made", 4);
	} else if (strcmp(p, "/notfound") == 0) {
		respond(sc, 404, NULL, "<Error><Code>NoSuchKey</Code></Error>", 37);
	} else {
		respond(sc, 400, NULL, "?", 1);
	}
	return true;
}

static void sconn_read_cb(struct bufferevent *bev, void *arg)
{
	struct sconn *sc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		if (sc->in_body) {
			size_t n = evbuffer_get_length(in);
			if (n > sc->body_left)
				n = (size_t)sc->body_left;
			if (n == 0 && sc->body_left > 0)
				return;
			unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)n);
			EVP_DigestUpdate(sc->md, p, n);
			evbuffer_drain(in, n);
			sc->body_len += n;
			sc->body_left -= n;
			if (sc->body_left > 0)
				return;
			sc->in_body = false;
			if (!handle(sc) || sc->close_after)
				return;
			continue;
		}
		/* A whole head or nothing. */
		struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
		if (end.pos < 0)
			return;
		char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF);
		sscanf(line, "%15s %255s", sc->method, sc->path);
		free(line);
		uint64_t cl = 0;
		while ((line = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF)) && line[0]) {
			if (strncasecmp(line, "Content-Length:", 15) == 0)
				cl = strtoull(line + 15, NULL, 10);
			free(line);
		}
		free(line);
		if (sc->md)
			EVP_MD_CTX_free(sc->md);
		sc->md = EVP_MD_CTX_new();
		EVP_DigestInit_ex(sc->md, EVP_sha256(), NULL);
		sc->body_len = 0;
		sc->body_left = cl;
		sc->in_body = true;
		if (cl == 0) {
			sc->in_body = false;
			if (!handle(sc) || sc->close_after)
				return;
		}
	}
}

static void sconn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		sconn_free(arg);
}

static void srv_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int salen, void *arg)
{
	struct srv *srv = arg;
	srv->accepts++;
	struct sconn *sc = xcalloc(1, sizeof(*sc));
	sc->srv = srv;
	if (srv->ssl_ctx)
		sc->bev = bufferevent_openssl_socket_new(srv->base, fd, SSL_new(srv->ssl_ctx),
		                                         BUFFEREVENT_SSL_ACCEPTING,
		                                         BEV_OPT_CLOSE_ON_FREE);
	else
		sc->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(sc->bev, sconn_read_cb, sconn_write_cb, sconn_event_cb, sc);
	bufferevent_enable(sc->bev, EV_READ | EV_WRITE);
}

static void srv_start(struct srv *srv, struct event_base *base, SSL_CTX *ctx)
{
	memset(srv, 0, sizeof(*srv));
	srv->base = base;
	srv->ssl_ctx = ctx;
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	srv->lis = evconnlistener_new_bind(base, srv_accept_cb, srv,
	                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
	                                   (struct sockaddr *)&sin, sizeof(sin));
	assert_non_null(srv->lis);
	struct sockaddr_in got;
	socklen_t gl = sizeof(got);
	getsockname(evconnlistener_get_fd(srv->lis), (struct sockaddr *)&got, &gl);
	srv->port = ntohs(got.sin_port);
}

/* Certificates. ---------------------------------------------------------------- */

/* A self-signed EC certificate for cn with the given subjectAltName. */
static void make_cert(const char *cn, const char *san, EVP_PKEY **key_out, X509 **cert_out)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	assert_non_null(key);
	X509 *x = X509_new();
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509_NAME *name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, name);
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
	assert_non_null(ext);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	assert_true(X509_sign(x, key, EVP_sha256()) > 0);
	*key_out = key;
	*cert_out = x;
}

static SSL_CTX *server_ctx(EVP_PKEY *key, X509 *cert)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
	return ctx;
}

static void write_pem(const char *path, X509 *cert)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, cert), 1);
	fclose(f);
}

/* Fixture. ------------------------------------------------------------------------- */

struct fx {
	struct event_base *base;
	struct srv srv;
	struct httpc *c;
	char dir[64];
};

struct res {
	int calls;
	bool failed;
	struct httpc_error err;
	int status;
	char *body;
	size_t body_len;
	char *xtest;
	uint64_t body_bytes;
	/* on_body */
	unsigned pieces;
	struct buf got;
	bool pause_once;
	struct httpc_req *req;
	struct event_base *base;
	struct httpc *free_client; /* httpc_free() inside done */
};

static void res_clear(struct res *r)
{
	free(r->body);
	free(r->xtest);
	buf_free(&r->got);
	memset(r, 0, sizeof(*r));
}

static void done_cb(struct httpc_req *req, const struct httpc_error *err,
                    const struct httpc_response *resp, void *arg)
{
	struct res *r = arg;
	r->calls++;
	r->failed = err != NULL;
	if (err)
		r->err = *err;
	if (resp) {
		r->status = resp->status;
		r->body = xstrndup(resp->body, resp->body_len);
		r->body_len = resp->body_len;
		r->body_bytes = resp->body_bytes;
		const char *x = httpc_response_header(resp, "x-test");
		r->xtest = x ? xstrdup(x) : NULL;
	}
	if (r->free_client) {
		httpc_free(r->free_client);
		r->free_client = NULL;
	}
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct res *r = arg;
	httpc_req_resume(r->req);
}

static bool body_cb(struct httpc_req *req, const char *data, size_t len, void *arg)
{
	struct res *r = arg;
	r->pieces++;
	buf_add(&r->got, data, len);
	if (r->pause_once) {
		r->pause_once = false;
		r->req = req;
		static const struct timeval tv = {0, 50000};
		event_base_once(r->base, -1, EV_TIMEOUT, resume_cb, r, &tv);
		return false;
	}
	return true;
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
	*(bool *)arg = true;
}

/* Runs the loop until every r has been called, or ms pass. */
static void run_until(struct fx *fx, struct res *r, int64_t ms)
{
	bool timeout = false;
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	struct event *t = evtimer_new(fx->base, stop_cb, &timeout);
	evtimer_add(t, &tv);
	while (!timeout && (!r || r->calls == 0))
		event_base_loop(fx->base, EVLOOP_ONCE);
	event_free(t);
}

static int setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	fx->base = event_base_new();
	srv_start(&fx->srv, fx->base, NULL);
	char *err = NULL;
	struct httpc_options o = {.io_timeout_ms = 5000, .connect_timeout_ms = 2000};
	fx->c = httpc_new(fx->base, &o, &err);
	assert_null(err);
	strcpy(fx->dir, "/tmp/sl-httpc-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	httpc_free(fx->c);
	evconnlistener_free(fx->srv.lis);
	/* Let the server's sockets see the EOFs and free themselves. */
	for (int i = 0; i < 20; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	event_base_free(fx->base);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", fx->dir);
	assert_int_equal(system(cmd), 0);
	free(fx);
	return 0;
}

static char *url(struct fx *fx, const char *path)
{
	return xasprintf("http://127.0.0.1:%u%s", fx->srv.port, path);
}

static struct httpc_req *get(struct fx *fx, const char *path, struct res *r)
{
	char *u = url(fx, path);
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	rq.sink = HTTPC_SINK_BUF;
	rq.max_body = 1 << 20;
	struct httpc_req *req = httpc_request(fx->c, &rq, done_cb, r);
	free(u);
	return req;
}

/* Tests. ---------------------------------------------------------------------------- */

static void test_url_parse(void **state)
{
	struct httpc_url u;
	const char *why;
	assert_true(httpc_url_parse("http://127.0.0.1:4569/b/k?x=1", &u, &why));
	assert_false(u.https);
	assert_string_equal(u.host, "127.0.0.1");
	assert_int_equal(u.port, 4569);
	assert_string_equal(u.path, "/b/k?x=1");
	assert_true(httpc_url_parse("https://s3.eu-west-1.amazonaws.com", &u, &why));
	assert_true(u.https);
	assert_int_equal(u.port, 443);
	assert_string_equal(u.path, "/");
	assert_true(httpc_url_parse("http://[::1]:8080/x", &u, &why));
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 8080);
	assert_false(httpc_url_parse("ftp://h/", &u, &why));
	assert_false(httpc_url_parse("http://h:0/", &u, &why));
	assert_false(httpc_url_parse("http://h:99999/", &u, &why));
	assert_false(httpc_url_parse("http://h:/", &u, &why));
	assert_false(httpc_url_parse("http:///x", &u, &why));
	assert_false(httpc_url_parse("http://u@h/", &u, &why));
	assert_false(httpc_url_parse("http://h/a b", &u, &why));
	assert_false(httpc_url_parse("http://[::1/", &u, &why));
}

static void test_keepalive_reuse(void **state)
{
	struct fx *fx = *state;
	for (int i = 0; i < 5; i++) {
		struct res r = {0};
		get(fx, "/hello", &r);
		assert_int_equal(r.calls, 0); /* never from inside the call */
		run_until(fx, &r, 3000);
		assert_int_equal(r.calls, 1);
		assert_false(r.failed);
		assert_int_equal(r.status, 200);
		assert_string_equal(r.body, "hello");
		assert_string_equal(r.xtest, "yes");
		res_clear(&r);
	}
	assert_int_equal(fx->srv.accepts, 1);
	struct httpc_stats st;
	httpc_get_stats(fx->c, &st);
	assert_int_equal(st.connects, 1);
	assert_int_equal(st.reuses, 4);
	assert_int_equal(st.idle, 1);
}

static void test_connection_close(void **state)
{
	struct fx *fx = *state;
	for (int i = 0; i < 3; i++) {
		struct res r = {0};
		get(fx, "/close", &r);
		run_until(fx, &r, 3000);
		assert_false(r.failed);
		assert_string_equal(r.body, "bye");
		res_clear(&r);
	}
	assert_int_equal(fx->srv.accepts, 3);
	struct httpc_stats st;
	httpc_get_stats(fx->c, &st);
	assert_int_equal(st.reuses, 0);
	assert_int_equal(st.idle, 0);
}

static void test_chunked_and_head(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	get(fx, "/chunked", &r);
	run_until(fx, &r, 3000);
	assert_false(r.failed);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "abcdefghi");
	assert_string_equal(r.xtest, "chunky");
	res_clear(&r);

	/* HEAD: a Content-Length but no body; the connection stays usable. */
	char *u = url(fx, "/big?n=1000");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "HEAD";
	rq.url = u;
	httpc_request(fx->c, &rq, done_cb, &r);
	free(u);
	run_until(fx, &r, 3000);
	assert_false(r.failed);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_bytes, 0);
	res_clear(&r);
	get(fx, "/hello", &r);
	run_until(fx, &r, 3000);
	assert_string_equal(r.body, "hello");
	res_clear(&r);
	assert_int_equal(fx->srv.accepts, 1);

	/* An interim 100 is skipped; a body until EOF is read whole. */
	get(fx, "/continue", &r);
	run_until(fx, &r, 3000);
	assert_int_equal(r.status, 201);
	assert_string_equal(r.body, "made");
	res_clear(&r);
	get(fx, "/eof", &r);
	run_until(fx, &r, 3000);
	assert_false(r.failed);
	assert_string_equal(r.body, "until-the-end");
	res_clear(&r);
}

static void test_body_callback_backpressure(void **state)
{
	struct fx *fx = *state;
	const size_t n = 3u << 20;
	struct res r = {.pause_once = true, .base = fx->base};
	char *u = url(fx, "/big?n=3145728");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	rq.sink = HTTPC_SINK_CB;
	rq.on_body = body_cb;
	httpc_request(fx->c, &rq, done_cb, &r);
	free(u);
	run_until(fx, &r, 10000);
	assert_false(r.failed);
	assert_int_equal(r.got.len, n);
	assert_true(r.pieces > 4); /* delivered in pieces, not whole */
	for (size_t i = 0; i < n; i += 4097)
		assert_int_equal(r.got.data[i], 'a' + i % 26);
	assert_int_equal(r.body_bytes, n);
	res_clear(&r);
}

static void test_bounded_buffer(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	char *u = url(fx, "/big?n=100000");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	rq.sink = HTTPC_SINK_BUF;
	rq.max_body = 1000;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 3000);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TOO_LARGE);
	assert_non_null(strstr(r.err.message, "100000"));
	res_clear(&r);
	free(u);

	/* Chunked bodies have no length up front: cut while reading. */
	u = url(fx, "/chunked");
	rq.url = u;
	rq.max_body = 4;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 3000);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TOO_LARGE);
	res_clear(&r);
	free(u);

	/* A 404's body goes to the error buffer whatever the sink. */
	u = url(fx, "/notfound");
	rq.url = u;
	rq.max_body = 1;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 3000);
	assert_false(r.failed);
	assert_int_equal(r.status, 404);
	assert_non_null(strstr(r.body, "NoSuchKey"));
	res_clear(&r);
	free(u);
}

static void sha_hex(const char *p, size_t n, char out[65])
{
	unsigned char d[32];
	unsigned int dl;
	EVP_Digest(p, n, d, &dl, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_upload_from_fd(void **state)
{
	struct fx *fx = *state;
	const size_t size = 5u << 20, off = 1000, len = 4u << 20;
	char *data = xmalloc(size);
	for (size_t i = 0; i < size; i++)
		data[i] = (char)(i * 2654435761u >> 13);
	char *path = xasprintf("%s/body", fx->dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, size), (ssize_t)size);
	char want[65], line[128];
	sha_hex(data + off, len, want);
	snprintf(line, sizeof(line), "%s %zu", want, len);

	struct res r = {0};
	char *u = url(fx, "/upload");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "PUT";
	rq.url = u;
	rq.body_fd = fd;
	rq.body_offset = off;
	rq.body_fd_len = len;
	rq.sink = HTTPC_SINK_BUF;
	rq.max_body = 1000;
	httpc_request(fx->c, &rq, done_cb, &r);
	close(fd); /* dup()ed by httpc */
	run_until(fx, &r, 10000);
	assert_false(r.failed);
	assert_string_equal(r.body, line);
	res_clear(&r);

	/* From memory, on the same connection. */
	sha_hex(data, 12345, want);
	snprintf(line, sizeof(line), "%s 12345", want);
	rq.body_fd = -1;
	rq.body = data;
	rq.body_len = 12345;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 10000);
	assert_false(r.failed);
	assert_string_equal(r.body, line);
	res_clear(&r);
	assert_int_equal(fx->srv.accepts, 1);

	/* A body file shorter than promised is an error, not a hang. */
	fd = open(path, O_RDONLY);
	rq.body = NULL;
	rq.body_len = 0;
	rq.body_fd = fd;
	rq.body_offset = size - 10;
	rq.body_fd_len = 100;
	httpc_request(fx->c, &rq, done_cb, &r);
	close(fd);
	run_until(fx, &r, 10000);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_BODY);
	res_clear(&r);
	free(u);
	free(path);
	free(data);
}

static void test_connect_refused(void **state)
{
	struct fx *fx = *state;
	/* A port nobody listens on: bind, read the port, close. */
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t sl = sizeof(sin);
	getsockname(s, (struct sockaddr *)&sin, &sl);
	close(s);
	char *u = xasprintf("http://127.0.0.1:%u/x", ntohs(sin.sin_port));
	struct res r = {0};
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	httpc_request(fx->c, &rq, done_cb, &r);
	assert_int_equal(r.calls, 0);
	run_until(fx, &r, 3000);
	assert_int_equal(r.calls, 1);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_CONNECT);
	assert_true(httpc_error_transient(&r.err));
	res_clear(&r);
	free(u);

	/* A bad URL fails from the loop too. */
	rq.url = "gopher://x/";
	httpc_request(fx->c, &rq, done_cb, &r);
	assert_int_equal(r.calls, 0);
	run_until(fx, &r, 1000);
	assert_int_equal(r.err.kind, HTTPC_ERR_URL);
	res_clear(&r);
}

static void test_read_timeout(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	char *u = url(fx, "/slow");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	rq.io_timeout_ms = 200;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 3000);
	assert_int_equal(r.calls, 1);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TIMEOUT);
	res_clear(&r);
	free(u);
}

static void test_cancel(void **state)
{
	struct fx *fx = *state;
	struct res r1 = {0}, r2 = {0}, r3 = {0};
	struct httpc_req *a = get(fx, "/slow", &r1);
	struct httpc_req *b = get(fx, "/hello", &r2);
	httpc_req_cancel(b); /* still queued */
	run_until(fx, NULL, 100);
	httpc_req_cancel(a); /* in flight */
	get(fx, "/hello", &r3);
	run_until(fx, &r3, 2000);
	run_until(fx, NULL, 100);
	assert_int_equal(r1.calls, 0);
	assert_int_equal(r2.calls, 0);
	assert_int_equal(r3.calls, 1);
	assert_string_equal(r3.body, "hello");
	res_clear(&r3);
	httpc_req_cancel(NULL);
}

static void test_pooled_closed_by_server(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	get(fx, "/close-soon", &r);
	run_until(fx, &r, 2000);
	assert_string_equal(r.body, "soon");
	res_clear(&r);
	run_until(fx, NULL, 150); /* the server closes the idle connection */
	get(fx, "/hello", &r);
	run_until(fx, &r, 2000);
	assert_false(r.failed);
	assert_string_equal(r.body, "hello");
	res_clear(&r);
	assert_int_equal(fx->srv.accepts, 2);
}

static void test_stale_retry(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	get(fx, "/drop-second", &r);
	run_until(fx, &r, 2000);
	assert_string_equal(r.body, "first");
	res_clear(&r);
	/* The pooled connection drops the request unanswered: a GET is tried
	 * again, once, on a new connection. */
	get(fx, "/drop-second", &r);
	run_until(fx, &r, 2000);
	assert_false(r.failed);
	assert_string_equal(r.body, "first");
	res_clear(&r);
	struct httpc_stats st;
	httpc_get_stats(fx->c, &st);
	assert_int_equal(st.retries, 1);
	assert_int_equal(fx->srv.accepts, 2);

	/* A POST is not idempotent: the error stands. */
	char *u = url(fx, "/drop-second");
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "POST";
	rq.url = u;
	httpc_request(fx->c, &rq, done_cb, &r);
	run_until(fx, &r, 2000);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_IO);
	res_clear(&r);
	free(u);
	httpc_get_stats(fx->c, &st);
	assert_int_equal(st.retries, 1);
}

static void test_max_conns_and_free_in_callback(void **state)
{
	struct fx *fx = *state;
	httpc_free(fx->c);
	char *err = NULL;
	struct httpc_options o = {.max_conns_per_host = 2};
	fx->c = httpc_new(fx->base, &o, &err);
	struct res r[6];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 6; i++)
		get(fx, "/hello", &r[i]);
	for (int i = 0; i < 6; i++)
		run_until(fx, &r[i], 3000);
	for (int i = 0; i < 6; i++) {
		assert_string_equal(r[i].body, "hello");
		res_clear(&r[i]);
	}
	assert_int_equal(fx->srv.accepts, 2);

	/* httpc_free() from a done callback while another request is pending. */
	r[0].free_client = fx->c;
	get(fx, "/hello", &r[0]);
	get(fx, "/slow", &r[1]);
	run_until(fx, &r[0], 3000);
	fx->c = NULL;
	run_until(fx, NULL, 50);
	assert_int_equal(r[1].calls, 0);
	res_clear(&r[0]);
}

/* TLS. ------------------------------------------------------------------------------ */

static void tls_case(struct fx *fx, const char *cn, const char *san, const char *host, bool use_ca,
                     struct res *r)
{
	EVP_PKEY *key;
	X509 *cert;
	make_cert(cn, san, &key, &cert);
	char *pem = xasprintf("%s/ca.pem", fx->dir);
	write_pem(pem, cert);
	struct srv tls;
	srv_start(&tls, fx->base, server_ctx(key, cert));
	char *err = NULL;
	struct httpc_options o = {.ca_file = use_ca ? pem : NULL, .connect_timeout_ms = 3000};
	struct httpc *c = httpc_new(fx->base, &o, &err);
	assert_non_null(c);
	char *u = xasprintf("https://%s:%u/hello", host, tls.port);
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.method = "GET";
	rq.url = u;
	rq.sink = HTTPC_SINK_BUF;
	rq.max_body = 100;
	httpc_request(c, &rq, done_cb, r);
	run_until(fx, r, 5000);
	assert_int_equal(r->calls, 1);
	if (!r->failed) {
		/* And again, on the same TLS connection. */
		struct res r2 = {0};
		httpc_request(c, &rq, done_cb, &r2);
		run_until(fx, &r2, 5000);
		assert_false(r2.failed);
		assert_string_equal(r2.body, "hello");
		assert_int_equal(tls.accepts, 1);
		res_clear(&r2);
	}
	httpc_free(c);
	evconnlistener_free(tls.lis);
	for (int i = 0; i < 20; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	SSL_CTX_free(tls.ssl_ctx);
	EVP_PKEY_free(key);
	X509_free(cert);
	free(u);
	free(pem);
}

static void test_tls_ok_with_ca_file(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	tls_case(fx, "127.0.0.1", "IP:127.0.0.1", "127.0.0.1", true, &r);
	assert_false(r.failed);
	assert_string_equal(r.body, "hello");
	res_clear(&r);
	/* By name: SNI and a DNS SAN. */
	tls_case(fx, "localhost", "DNS:localhost", "localhost", true, &r);
	assert_false(r.failed);
	assert_string_equal(r.body, "hello");
	res_clear(&r);
}

static void test_tls_untrusted(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	tls_case(fx, "127.0.0.1", "IP:127.0.0.1", "127.0.0.1", false, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TLS);
	assert_non_null(strstr(r.err.message, "verif"));
	assert_false(httpc_error_transient(&r.err));
	res_clear(&r);
}

static void test_tls_hostname_mismatch(void **state)
{
	struct fx *fx = *state;
	struct res r = {0};
	tls_case(fx, "example.invalid", "DNS:example.invalid", "127.0.0.1", true, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TLS);
	res_clear(&r);
	tls_case(fx, "example.invalid", "DNS:example.invalid", "localhost", true, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, HTTPC_ERR_TLS);
	assert_non_null(strstr(r.err.message, "mismatch"));
	res_clear(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_url_parse),
	        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_chunked_and_head, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_body_callback_backpressure, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_bounded_buffer, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_upload_from_fd, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_read_timeout, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_pooled_closed_by_server, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_stale_retry, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_max_conns_and_free_in_callback, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_tls_ok_with_ca_file, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_tls_untrusted, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_tls_hostname_mismatch, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
