/* httpc: an asynchronous HTTP/1.1 client on the daemon's libevent loop, the
 * transport of the S3 store. It owns a keep-alive connection pool per
 * (scheme, host, port), TLS through OpenSSL (bufferevent_openssl), request
 * bodies from memory or streamed from a file descriptor, and response bodies
 * into a bounded buffer, a file descriptor or a callback with backpressure.
 *
 * Rules:
 * - Every callback fires from the loop, never from inside the call that
 *   started the request (an unparsable URL is reported from the loop too).
 *   The done callback fires exactly once unless the request was cancelled.
 * - Errors are values (struct httpc_error); nothing aborts but OOM.
 * - A connection goes back to the pool only when the response was read whole,
 *   the request body was sent whole and neither side said Connection: close.
 *   A reused connection that fails before any response byte arrived is retried
 *   once on a new connection when the method is idempotent (GET, HEAD, PUT,
 *   DELETE, OPTIONS).
 * - Names: IP literals are used as they are and "localhost" is 127.0.0.1;
 *   any other name goes through evdns (libevent's asynchronous resolver,
 *   created on first use from /etc/resolv.conf), so the loop never blocks on
 *   DNS.
 * - TLS verifies the peer's chain (system CAs, or ca_file) and its name
 *   (SSL_set1_host; an IP literal is checked against the IP SANs), with SNI
 *   for names.
 * - Non-2xx response bodies always go to a small internal buffer
 *   (HTTPC_ERROR_BODY_MAX, longer ones are cut) whatever the sink, so an S3
 *   error document never lands in a download file.
 * - The process must ignore SIGPIPE (main() does): a peer that closes while
 *   a body is being written is an error value, not a signal.
 * Ownership: httpc_new() returns a client freed with httpc_free() (before the
 * event_base), which cancels every request without a callback; it is safe
 * from inside a callback. A request handle is valid until its done callback
 * returns or httpc_req_cancel(). */
#ifndef SL_HTTPC_HTTPC_H
#define SL_HTTPC_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct httpc;
struct httpc_req;

#define HTTPC_ERROR_BODY_MAX (64u * 1024)
#define HTTPC_HEADER_BYTES_MAX (64u * 1024) /* status line plus header block */
#define HTTPC_HEADERS_MAX 128

enum httpc_error_kind {
	HTTPC_ERR_URL, /* the URL (or a header) cannot be sent */
	HTTPC_ERR_DNS, /* the name did not resolve */
	HTTPC_ERR_CONNECT, /* refused, unreachable, reset while connecting */
	HTTPC_ERR_TLS, /* handshake or certificate verification failed */
	HTTPC_ERR_TIMEOUT, /* connect timeout or no progress for io_timeout_ms */
	HTTPC_ERR_IO, /* the connection broke or ended mid-exchange */
	HTTPC_ERR_PROTOCOL, /* the response is not HTTP/1.x we can read */
	HTTPC_ERR_TOO_LARGE, /* the body is more than the bounded buffer allows */
	HTTPC_ERR_BODY, /* reading the request body's file failed or it ended early */
	HTTPC_ERR_SINK, /* writing the response body's file failed */
	HTTPC_ERR_CANCELLED, /* httpc_free() is never reported; kept for callers' mapping */
};

struct httpc_error {
	enum httpc_error_kind kind;
	char message[512];
};

const char *httpc_error_kind_name(enum httpc_error_kind kind);
/* Connection-level failures worth retrying elsewhere (connect, DNS, timeout,
 * IO); never URL, TLS verification, protocol, size or local file errors. */
bool httpc_error_transient(const struct httpc_error *err);

struct httpc_header {
	const char *name;
	const char *value;
};

struct httpc_response {
	int status;
	int minor_version; /* HTTP/1.<minor> */
	const struct httpc_header *headers;
	size_t nheaders;
	/* HTTPC_SINK_BUF bodies and every non-2xx body: NUL-terminated. */
	const char *body;
	size_t body_len;
	uint64_t body_bytes; /* bytes of body received, whatever the sink */
};

/* The first header named name (case-insensitive), or NULL. */
const char *httpc_response_header(const struct httpc_response *resp, const char *name);

enum httpc_sink {
	HTTPC_SINK_BUF, /* into memory, at most max_body bytes, else HTTPC_ERR_TOO_LARGE */
	HTTPC_SINK_FD, /* write(2) to sink_fd (the caller's; not closed) */
	HTTPC_SINK_CB, /* on_body, with backpressure */
	HTTPC_SINK_DISCARD,
};

/* Response head seen (any status). Returning false cancels the request: no
 * callback follows. */
typedef bool (*httpc_head_cb)(struct httpc_req *req, const struct httpc_response *resp, void *arg);
/* A piece of a 2xx body. Return true to go on, false to pause: nothing more
 * is read from the socket (and no timeout runs) until httpc_req_resume(). */
typedef bool (*httpc_body_cb)(struct httpc_req *req, const char *data, size_t len, void *arg);
/* The end: err NULL on a complete response (of any status), resp NULL when
 * no status line arrived. Both valid only during the call. */
typedef void (*httpc_done_cb)(struct httpc_req *req, const struct httpc_error *err,
                              const struct httpc_response *resp, void *arg);

struct httpc_request {
	const char *method; /* "GET", "PUT", ... */
	const char *url; /* http[s]://host[:port]/path?query, path already percent-encoded */
	const struct httpc_header *headers; /* Host is added when absent */
	size_t nheaders;
	/* Body: from memory (copied before httpc_request() returns) ... */
	const void *body;
	size_t body_len;
	/* ... or body_fd >= 0: [body_offset, body_offset + body_fd_len) read with
	 * pread() in chunks as the socket drains. The fd is dup()ed: the caller
	 * may close its own at once. Leave body_fd at -1 otherwise (0 is a valid
	 * descriptor: set it explicitly). */
	int body_fd;
	uint64_t body_offset;
	uint64_t body_fd_len;
	enum httpc_sink sink;
	size_t max_body; /* HTTPC_SINK_BUF */
	int sink_fd; /* HTTPC_SINK_FD */
	httpc_head_cb on_head; /* optional */
	httpc_body_cb on_body; /* HTTPC_SINK_CB */
	int64_t connect_timeout_ms; /* 0: the client's */
	int64_t io_timeout_ms; /* 0: the client's; the longest time without progress */
};

/* A zeroed request with body_fd = -1 and sink_fd = -1. */
#define HTTPC_REQUEST_INIT                   \
	{                                    \
		.body_fd = -1, .sink_fd = -1 \
	}

struct httpc_options {
	unsigned max_conns_per_host; /* 0: 8 */
	int64_t pool_idle_timeout_ms; /* 0: 30 s; an idle pooled connection closes after it */
	int64_t connect_timeout_ms; /* 0: 10 s (TLS handshake included) */
	int64_t io_timeout_ms; /* 0: 60 s */
	const char *ca_file; /* NULL: the system's CA store */
	bool insecure_skip_verify; /* tests only: no certificate check at all */
};

struct httpc_stats {
	uint64_t connects; /* connections opened (TCP connects started) */
	uint64_t reuses; /* requests sent on a pooled connection */
	uint64_t retries; /* stale-connection retries */
	size_t open; /* connections open now */
	size_t idle; /* of which idle in the pool */
};

/* NULL and *err (caller frees) when the TLS context cannot be made (a bad
 * ca_file). opts may be NULL. */
struct httpc *httpc_new(struct event_base *base, const struct httpc_options *opts, char **err)
        __attribute__((warn_unused_result));
void httpc_free(struct httpc *c);

/* Starts a request; never NULL. done fires once from the loop. */
struct httpc_req *httpc_request(struct httpc *c, const struct httpc_request *rq, httpc_done_cb done,
                                void *arg);
/* No callback of req fires afterwards. A no-op from inside its own done
 * callback. The connection it was using is closed. NULL is a no-op. */
void httpc_req_cancel(struct httpc_req *req);
/* After an on_body that returned false: reading goes on from the loop. */
void httpc_req_resume(struct httpc_req *req);

void httpc_get_stats(const struct httpc *c, struct httpc_stats *out);

/* Pure helpers (exposed for tests). ---------------------------------------- */

struct httpc_url {
	bool https;
	char host[256]; /* without brackets for IPv6 */
	unsigned port;
	const char *path; /* points into the URL: "/..." (with the query), "/" when empty */
};
bool httpc_url_parse(const char *url, struct httpc_url *out, const char **why)
        __attribute__((warn_unused_result));

#endif
