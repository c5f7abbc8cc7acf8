/* cli/http: the CLI's small blocking HTTP/1.1 client: one request per
 * connection (Connection: close), http:// only, with a total deadline.
 * The URL parser, the request formatter and the response parser are pure;
 * cli_http_exchange() (a whole response) and the cli_http_stream_*()
 * functions (a response read line by line as it arrives, for an event
 * stream) are the only ones that do I/O. */
#ifndef SL_CLI_HTTP_H
#define SL_CLI_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* A parsed base URL: http://host[:port][/base/path]. Owned strings; free
 * with cli_http_url_clear(). */
struct cli_http_url {
	char *host; /* without brackets for an IPv6 literal */
	char *port; /* "80" when the URL names none */
	char *authority; /* host[:port] as written, for the Host header */
	char *base_path; /* "" or "/prefix" without a trailing slash */
};

/* What went wrong, for one line of text. */
enum cli_http_error_kind {
	CLI_HTTP_ERR_URL, /* the URL is not one we can use */
	CLI_HTTP_ERR_CONNECT, /* name resolution or connect failed */
	CLI_HTTP_ERR_TIMEOUT, /* the deadline passed */
	CLI_HTTP_ERR_IO, /* send or receive failed after connecting */
	CLI_HTTP_ERR_PROTOCOL, /* the response is not HTTP/1.x we can read */
	CLI_HTTP_ERR_REQUEST, /* the request itself is unusable (a CR in a header) */
};

struct cli_http_error {
	enum cli_http_error_kind kind;
	char msg[256];
};

/* A request header. */
struct cli_http_field {
	const char *name, *value;
};

/* A response header (owned by the response). */
struct cli_http_header {
	char *name, *value;
};

/* A request. Header values must not contain CR, LF or NUL. */
struct cli_http_request {
	const char *method;
	const char *path; /* below the URL's base path, starting with '/' */
	const struct cli_http_field *headers;
	size_t nheaders;
	const char *body; /* NULL: no body */
	size_t body_len;
	const char *content_type; /* sent with a body */
};

/* A response; free with cli_http_response_clear(). body is NUL-terminated. */
struct cli_http_response {
	int status;
	char *reason;
	struct cli_http_header *headers;
	size_t nheaders;
	struct buf body;
};

/* Parses a base URL. https:// and anything but http:// fail with a message.
 * On failure u is left empty (clearing it is still fine). */
bool cli_http_url_parse(const char *text, struct cli_http_url *u, struct cli_http_error *e)
        __attribute__((warn_unused_result));
void cli_http_url_clear(struct cli_http_url *u);

/* Appends the request head and body to out. Fails (no output) when a header
 * name or value could split the head. */
bool cli_http_request_format(struct buf *out, const struct cli_http_url *u,
                             const struct cli_http_request *rq, struct cli_http_error *e)
        __attribute__((warn_unused_result));

/* The incremental response parser. Feed it the whole of what was read so
 * far (data grows, earlier bytes unchanged) after every read, with eof once
 * the peer closed; it keeps its position (pos). Between feeds the caller
 * may drop the bytes before pos and set pos to 0: the parser never looks
 * back. */
enum cli_http_parse {
	CLI_HTTP_PARSE_MORE,
	CLI_HTTP_PARSE_DONE,
	CLI_HTTP_PARSE_ERROR,
};

struct cli_http_parser {
	int state;
	size_t pos; /* bytes of data consumed */
	size_t remaining; /* body or chunk bytes still to come */
	bool no_body; /* HEAD request */
	bool got_bytes; /* something was fed: a close is not "without a response" */
	struct cli_http_response *resp;
};

/* resp is where the result goes (it must be zeroed); it belongs to the
 * caller, who clears it whatever the outcome. */
void cli_http_parser_init(struct cli_http_parser *p, struct cli_http_response *resp,
                          bool head_request);
enum cli_http_parse cli_http_parser_feed(struct cli_http_parser *p, const char *data, size_t len,
                                         bool eof, struct cli_http_error *e);

/* The first header called name (case-insensitive), or NULL. */
const char *cli_http_response_header(const struct cli_http_response *r, const char *name);
void cli_http_response_clear(struct cli_http_response *r);

/* Sends rq to u and reads the whole response into resp (zeroed by the
 * caller, cleared by the caller), all within timeout_ms; connecting gets
 * at most 10 s of it. */
bool cli_http_exchange(const struct cli_http_url *u, const struct cli_http_request *rq,
                       int timeout_ms, struct cli_http_response *resp, struct cli_http_error *e)
        __attribute__((warn_unused_result));

/* A response whose body is read as it arrives (an event stream). */
struct cli_http_stream {
	int fd; /* -1 once the connection is closed */
	struct cli_http_response resp; /* body: what arrived and was not handed out yet */
	struct cli_http_parser parser;
	struct buf in; /* read, not yet parsed */
	size_t off; /* bytes at the start of resp.body already handed out */
	bool done; /* the body ended (the server closed, or its framing says so) */
};

/* Sends rq to u and reads the response head, all within timeout_ms
 * (connecting gets at most 10 s of it). On success s->resp has the status
 * and the headers; a 2xx body is then read with cli_http_stream_line(),
 * any other response is read whole into s->resp.body (a problem to report)
 * before this returns. s is the caller's (not moved while open); clear it
 * with cli_http_stream_close() whatever the outcome. */
bool cli_http_stream_open(struct cli_http_stream *s, const struct cli_http_url *u,
                          const struct cli_http_request *rq, int timeout_ms,
                          struct cli_http_error *e) __attribute__((warn_unused_result));

enum cli_http_read {
	CLI_HTTP_READ_LINE, /* *line is the next line of the body */
	CLI_HTTP_READ_END, /* the body ended; every line was handed out */
	CLI_HTTP_READ_TIMEOUT, /* the deadline came first */
	CLI_HTTP_READ_ERROR, /* the connection broke or the framing is wrong (e says) */
};

/* The body's next line without its end (LF, CR LF or CR) in *line, NUL-
 * terminated and valid until the next call, and its length in *len; waits
 * for it until deadline_us on the monotonic clock (a deadline that passed
 * still takes what the socket holds). A last line without an end is handed
 * out before END. */
enum cli_http_read cli_http_stream_line(struct cli_http_stream *s, int64_t deadline_us,
                                        const char **line, size_t *len, struct cli_http_error *e);

/* Closes the connection and frees everything; s can be opened again. Only
 * for an s that cli_http_stream_open() was called on. */
void cli_http_stream_close(struct cli_http_stream *s);

#endif
