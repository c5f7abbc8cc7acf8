/* server: the HTTP/1.1 front door on libevhtp, hardened. It owns the
 * listener, every connection and every in-flight request; it enforces the
 * limits of ARCHITECTURE §10 with proper answers (408, 413, 414, 431, 400)
 * instead of libevhtp's silent closes, routes requests through router.c,
 * writes the access log and the HTTP metrics, and drains gracefully.
 * No evhtp type leaves src/http/. */
#ifndef SL_HTTP_SERVER_H
#define SL_HTTP_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/router.h"

struct event_base;
struct http_server;
struct http_req;

struct http_server_opts {
	int64_t max_body_bytes;
	int64_t max_header_bytes;
	int64_t max_header_fields;
	int64_t header_timeout_ms;
	int64_t idle_timeout_ms;
	const char *instance_id; /* for logs */
};

typedef void (*http_handler_fn)(struct http_req *req, void *arg);
typedef void (*http_abort_fn)(struct http_req *req, void *arg);
typedef void (*http_drained_fn)(void *arg);

/* The server borrows router (the caller frees it after the server). */
struct http_server *http_server_new(struct event_base *base, struct router *router,
                                    const struct http_server_opts *opts);
/* Binds "host:port", "[v6]:port" or "unix:/path"; port 0 picks a free one.
 * On failure *err gets a heap message. */
bool http_server_listen(struct http_server *srv, const char *addr, char **err)
        __attribute__((warn_unused_result));
/* The bound address ("127.0.0.1:43211"), valid after a successful listen. */
const char *http_server_address(const struct http_server *srv);
/* Stops accepting, closes idle connections, lets in-flight requests answer
 * (with Connection: close) and calls done once no connection is left. */
void http_server_drain(struct http_server *srv, http_drained_fn done, void *arg);
size_t http_server_connections(const struct http_server *srv);
/* Frees everything, closing whatever is still open; no callback fires. */
void http_server_free(struct http_server *srv);

/* Registers a handler: a convenience over router_add that types the handler. */
bool http_route(struct router *r, unsigned methods, const char *template_, http_handler_fn fn,
                void *arg) __attribute__((warn_unused_result));

/* --- For handlers (src/http/api_*.c) --------------------------------- */

const char *http_req_id(const struct http_req *req);
const char *http_req_route(const struct http_req *req);
enum http_method http_req_method(const struct http_req *req);
const char *http_req_path(const struct http_req *req);
const char *http_req_param(const struct http_req *req, const char *name);
const char *http_req_query(const struct http_req *req, const char *name);
const char *http_req_header(const struct http_req *req, const char *name);
/* The client's address without the port ("127.0.0.1", "::1"), "unix" for a
 * Unix-socket client, "" once the connection is gone. */
const char *http_req_peer(const struct http_req *req);
/* The request body (NUL-terminated copy kept by the request). */
const char *http_req_body(struct http_req *req, size_t *len);
struct http_server *http_req_server(const struct http_req *req);

/* A handler that answers later registers abort: it runs (once) if the
 * request dies before the answer — the client left or the server is being
 * freed — and the handler must then forget req. */
void http_req_on_abort(struct http_req *req, http_abort_fn fn, void *arg);

void http_set_header(struct http_req *req, const char *name, const char *value);
/* Every reply ends the handler's use of req. content_type must be a string
 * that outlives the response (a literal): it is not copied. */
void http_reply(struct http_req *req, int status, const char *content_type, const void *body,
                size_t len);
/* A long-lived response (Server-Sent Events): writes a 200 head with
 * content_type, Cache-Control: no-cache and Connection: close (the body ends
 * when the connection does), finishes the request (access log, metrics) and
 * hands the connection's socket over — non-blocking, the server forgets it.
 * Returns the fd, which the caller closes; -1 when the client is gone. */
int http_req_take_stream(struct http_req *req, const char *content_type);
/* The same with status 200 or 206 and extra header lines (each ending in
 * "\r\n", may be NULL): a streamed download. */
int http_req_take_stream_head(struct http_req *req, int status, const char *content_type,
                              const char *extra);
/* Takes the reference to body. */
void http_reply_json(struct http_req *req, int status, json_t *body);
/* RFC 9457: slug names the problem type (see problem.h). extra is borrowed. */
void http_reply_problem(struct http_req *req, int status, const char *slug, const char *title,
                        const char *detail, const json_t *extra);

#endif
