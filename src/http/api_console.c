/* The web console's static files (docs/console.md): GET/HEAD /console
 * (a redirect to /console/), /console/ (index.html) and /console/{path+},
 * read from server.console_dir. The directory is walked one segment at a
 * time with openat(O_NOFOLLOW) from a fresh descriptor of the root, so
 * neither a dot segment (the router refuses those anyway) nor a symlink
 * anywhere below the root can lead outside it, and hidden names are
 * refused. Files are small (a bundle, a stylesheet, index.html) and read
 * whole, bounded by CONSOLE_FILE_MAX; reading them per request keeps the
 * daemon free of build steps and lets a rebuild show without a restart.
 * Every answer carries the console's security headers: a strict CSP (no
 * inline script or style, same-origin only), nosniff, no referrer. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/app.h"
#include "core/config.h"
#include "core/xmalloc.h"
#include "http/api.h"
#include "http/server.h"

#define CONSOLE_FILE_MAX (8u << 20)
#define CONSOLE_CSP                                                                          \
	"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "    \
	"connect-src 'self'; font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; " \
	"base-uri 'none'; form-action 'self'"
/* Files under assets/ carry a content hash in their names (the build
 * writes them so): they never change under the same name. */
#define CONSOLE_IMMUTABLE "public, max-age=31536000, immutable"

struct console {
	char *root; /* absolute; "" = off */
};

static const struct {
	const char *ext;
	const char *type;
} console_types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},
        {".map", "application/json"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".txt", "text/plain; charset=utf-8"},
        {".woff2", "font/woff2"},
        {".webmanifest", "application/manifest+json"},
};

/* The Content-Type of a file by its extension; unknown ones are bytes. */
static const char *console_type(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *dot = strrchr(slash ? slash : path, '.');
	if (dot != NULL)
		for (size_t i = 0; i < sizeof console_types / sizeof console_types[0]; i++)
			if (strcasecmp(dot, console_types[i].ext) == 0)
				return console_types[i].type;
	return "application/octet-stream";
}

static void console_security_headers(struct http_req *req)
{
	http_set_header(req, "Content-Security-Policy", CONSOLE_CSP);
	http_set_header(req, "X-Content-Type-Options", "nosniff");
	http_set_header(req, "Referrer-Policy", "no-referrer");
	http_set_header(req, "X-Frame-Options", "DENY");
	http_set_header(req, "Cross-Origin-Opener-Policy", "same-origin");
	http_set_header(req, "Cross-Origin-Resource-Policy", "same-origin");
}

static void console_not_found(struct http_req *req, const char *detail)
{
	console_security_headers(req);
	http_reply_problem(req, 404, "not-found", NULL, detail, NULL);
}

/* Opens rel (segments separated by '/') under root without following a
 * symlink anywhere and without hidden names; -1 (errno set) otherwise. */
static int console_open(const char *root, const char *rel)
{
	int dir = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return -1;
	const char *p = rel;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == 0 || len > 255 || p[0] == '.' || memchr(p, '\0', len)) {
			close(dir);
			errno = ENOENT;
			return -1;
		}
		char name[256];
		memcpy(name, p, len);
		name[len] = '\0';
		int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (e ? O_DIRECTORY : O_NONBLOCK);
		int fd = openat(dir, name, flags);
		int saved = errno;
		close(dir);
		if (fd < 0) {
			errno = saved;
			return -1;
		}
		if (e == NULL)
			return fd;
		dir = fd;
		p = e + 1;
	}
}

/* Reads the regular file fd (at most CONSOLE_FILE_MAX) into a new buffer. */
static char *console_read(int fd, const struct stat *st, size_t *len)
{
	if (!S_ISREG(st->st_mode) || st->st_size < 0 || (uint64_t)st->st_size > CONSOLE_FILE_MAX)
		return NULL;
	size_t want = (size_t)st->st_size;
	char *buf = xmalloc(want ? want : 1);
	size_t got = 0;
	while (got < want) {
		ssize_t n = read(fd, buf + got, want - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got != want) {
		free(buf);
		return NULL;
	}
	*len = got;
	return buf;
}

/* Whether an If-None-Match list names etag (or is "*"). */
static bool console_etag_matches(const char *inm, const char *etag)
{
	if (inm == NULL)
		return false;
	size_t elen = strlen(etag);
	for (const char *p = inm; *p;) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (strncmp(p, "W/", 2) == 0)
			p += 2; /* weak comparison (RFC 9110 §13.1.2) */
		if (strncmp(p, etag, elen) == 0 &&
		    (p[elen] == '\0' || p[elen] == ',' || p[elen] == ' ' || p[elen] == '\t'))
			return true;
		while (*p && *p != ',')
			p++;
	}
	return false;
}

static void console_serve(struct http_req *req, struct console *c, const char *rel)
{
	int fd = console_open(c->root, rel);
	if (fd < 0) {
		console_not_found(req, "no such console file");
		return;
	}
	struct stat st;
	size_t len = 0;
	char *body = NULL;
	if (fstat(fd, &st) == 0)
		body = console_read(fd, &st, &len);
	close(fd);
	if (body == NULL) {
		console_not_found(req, "no such console file");
		return;
	}
	char etag[64], modified[64], length[32];
	snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "-%lx\"", (uint64_t)st.st_size,
	         (uint64_t)st.st_mtim.tv_sec, (unsigned long)st.st_mtim.tv_nsec);
	struct tm tm;
	gmtime_r(&st.st_mtim.tv_sec, &tm);
	strftime(modified, sizeof modified, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	console_security_headers(req);
	http_set_header(req, "ETag", etag);
	http_set_header(req, "Last-Modified", modified);
	http_set_header(req, "Cache-Control",
	                strncmp(rel, "assets/", 7) == 0 ? CONSOLE_IMMUTABLE : "no-cache");
	if (console_etag_matches(http_req_header(req, "If-None-Match"), etag)) {
		free(body);
		http_reply(req, 304, NULL, NULL, 0);
		return;
	}
	if (http_req_method(req) == HTTP_M_HEAD) {
		/* No body goes out: say how long it would have been. */
		snprintf(length, sizeof length, "%zu", len);
		http_set_header(req, "Content-Length", length);
	}
	http_reply(req, 200, console_type(rel), body, len);
	free(body);
}

static bool console_enabled(struct http_req *req, struct console *c)
{
	if (c->root[0] != '\0')
		return true;
	console_not_found(req, "the web console is off (server.console_dir is empty)");
	return false;
}

/* /console and /console/ (the router takes both for one template). */
static void console_index(struct http_req *req, void *arg)
{
	struct console *c = arg;
	if (!console_enabled(req, c))
		return;
	const char *path = http_req_path(req);
	if (path[strlen(path) - 1] != '/') {
		/* Relative asset URLs in index.html need the trailing slash. */
		http_set_header(req, "Location", "/console/");
		console_security_headers(req);
		http_reply(req, 301, "text/plain; charset=utf-8", "/console/\n", 10);
		return;
	}
	console_serve(req, c, "index.html");
}

static void console_file(struct http_req *req, void *arg)
{
	struct console *c = arg;
	if (!console_enabled(req, c))
		return;
	console_serve(req, c, http_req_param(req, "path"));
}

/* The router borrows c for the daemon's life: one per process, freed by
 * the OS at exit like the other registration contexts. */
bool api_console_register(struct router *r, struct api_ctx *ctx)
{
	static struct console console;
	free(console.root);
	console.root = config_resolve_path(ctx->app->cfg, ctx->app->cfg->server.console_dir);
	return http_route(r, HTTP_M_GET, "/console", console_index, &console) &&
	       http_route(r, HTTP_M_GET, "/console/{path+}", console_file, &console);
}
