/* tests/bench/sse_client.c: an epoll client for tests/bench/sse.sh. It opens
 * N Server-Sent Events streams to one URL, parses them, counts the events
 * and measures how late each one arrives. libc only; the script builds it
 * with `cc -O2`.
 *
 *   sse_client -a 127.0.0.1:PORT -u /v1/jobs/ID/events -n 10000 [options]
 *
 *   -a HOST:PORT  the server (IPv4)
 *   -u PATH       the stream's path (GET)
 *   -n N          streams to open
 *   -c C          at most C streams connecting at once, i.e. without their
 *                 ready mark yet (default 256: the kernel's accept backlog
 *                 is 4096 and SYNs past it are retried only after 1 s)
 *   -R TYPE       the event that makes a stream "ready" (live): stageline's
 *                 `snapshot`. Events before it are the replay and are only
 *                 counted; events after it are deliveries. Without -R a
 *                 stream is ready at its response head (nchan).
 *   -K K          a stream is done after K deliveries (nchan, which has no
 *                 `end`); without it a stream is done at `event: end` or EOF
 *   -r FILE       when every stream is ready (or failed), write
 *                 "ready R\n" to FILE (R = ready streams)
 *   -g FILE       then wait for FILE to exist before publishing (with -P)
 *   -P PATH       publisher: POST -M messages of -S bytes to PATH on the
 *                 same server, one after the other, each on a new
 *                 connection, each sent when the previous one was answered;
 *                 the body is {"seq":i,"ts":"<now, RFC 3339>","pad":"..."}
 *   -M M, -S B    messages (default 200) and their size (default 300)
 *   -T S          give up after S seconds in all (default 300)
 *   -x PREFIX     prefix of the output names (default none)
 *   -H VER        HTTP version of the stream requests: 1.1 (default) or 1.0
 *   -D FILE       write "stream seq receive_time_us latency_us" for each
 *                 delivery to FILE (to see which events are late)
 *
 * A delivery is an event after the stream's ready mark, other than `end`;
 * its latency is the client's CLOCK_REALTIME when the read() that brought
 * it returned, minus the time in its data's "ts" (RFC 3339, UTC, up to
 * microseconds). Chunked responses are not decoded: a stream whose head
 * says chunked counts as failed.
 *
 * Output on stdout, one `name value` a line (see tests/bench/README.md).
 * Exit status 0 when it could measure (even if streams failed), 2 on bad
 * usage, 1 when nothing could be set up. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum st_state { S_IDLE, S_CONNECTING, S_HEAD, S_BODY, S_DONE };
enum st_end { E_NONE, E_END, E_COUNT, E_EOF, E_FAILED };

struct stream {
	int fd;
	uint8_t state;
	uint8_t end;
	uint8_t ready;
	uint32_t deliveries;
	uint32_t replayed;
	char *part; /* an incomplete head or event carried to the next read */
	uint32_t plen, pcap;
};

static struct sockaddr_in g_addr;
static const char *g_host = "127.0.0.1";
static const char *g_path;
static const char *g_ready_type;
static const char *g_http = "1.1";
static long g_k;
static int g_ep;
static char g_req[2048];
static size_t g_reqlen;

static struct stream *g_st;
static long g_n, g_conc = 256;
static long g_started, g_pending; /* pending: started, not ready, not finished */
static long g_ready, g_failed, g_ended, g_counted, g_eof;
static long g_fail_connect, g_fail_status, g_fail_closed; /* why streams failed */
static uint64_t g_deliveries, g_durable, g_replayed, g_bytes, g_live_bytes;
static int64_t g_first_live_us = -1, g_last_done_us = -1, g_last_live_us = -1;
static int64_t g_t0_us, g_all_ready_us = -1;

static int32_t *g_lat; /* microseconds */
static size_t g_nlat, g_caplat;
static uint64_t g_no_ts;
static FILE *g_dump; /* -D: every delivery */

static char g_rb[1 << 18];

/* publisher */
static const char *g_pub_path;
static long g_pub_m = 200, g_pub_size = 300;
static long g_pub_sent, g_pub_ok, g_pub_err;
static int g_pub_fd = -1;
static char g_pub_resp[512];
static size_t g_pub_rlen;
static int64_t g_pub_start_us = -1, g_pub_end_us = -1;
#define PUB_TAG ((uint64_t)1 << 40)

static int64_t now_us(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what)
{
	fprintf(stderr, "sse_client: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* days since 1970-01-01 of a civil date (H. Hinnant's algorithm) */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const char *p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	*out = v;
	return 0;
}

/* "YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+00:00)" -> microseconds since the epoch */
static int parse_rfc3339(const char *p, const char *end, int64_t *out)
{
	int y, mo, d, h, mi, s;
	if (end - p < 20 || digits(p, 4, &y) || p[4] != '-' || digits(p + 5, 2, &mo) ||
	    p[7] != '-' || digits(p + 8, 2, &d) || (p[10] != 'T' && p[10] != ' ') ||
	    digits(p + 11, 2, &h) || p[13] != ':' || digits(p + 14, 2, &mi) || p[16] != ':' ||
	    digits(p + 17, 2, &s))
		return -1;
	const char *q = p + 19;
	int64_t frac = 0;
	if (q < end && *q == '.') {
		int nd = 0;
		q++;
		while (q < end && *q >= '0' && *q <= '9') {
			if (nd < 6) {
				frac = frac * 10 + (*q - '0');
				nd++;
			}
			q++;
		}
		while (nd++ < 6)
			frac *= 10;
	}
	int64_t off = 0;
	if (q < end && (*q == '+' || *q == '-') && end - q >= 6) {
		int oh, om;
		if (digits(q + 1, 2, &oh) || digits(q + 4, 2, &om))
			return -1;
		off = (oh * 3600 + om * 60) * (*q == '+' ? 1 : -1);
	}
	int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
	               s - off;
	*out = secs * 1000000 + frac;
	return 0;
}

static void lat_add(int64_t us)
{
	if (g_nlat == g_caplat) {
		g_caplat = g_caplat ? g_caplat * 2 : 1 << 16;
		g_lat = realloc(g_lat, g_caplat * sizeof *g_lat);
		if (!g_lat)
			die("realloc");
	}
	if (us > INT32_MAX)
		us = INT32_MAX;
	if (us < INT32_MIN)
		us = INT32_MIN;
	g_lat[g_nlat++] = (int32_t)us;
}

static void write_ready_file(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		die(tmp);
	fprintf(f, "ready %ld\n", g_ready);
	fclose(f);
	if (rename(tmp, path) != 0)
		die(path);
}

static void stream_finish(struct stream *st, int how, int64_t t)
{
	if (st->state == S_DONE)
		return;
	if (st->state != S_IDLE && !st->ready)
		g_pending--;
	if (st->fd >= 0) {
		if (how == E_COUNT) { /* we close first: no TIME_WAIT on our side */
			struct linger l = {1, 0};
			setsockopt(st->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
		}
		close(st->fd); /* also leaves the epoll set */
		st->fd = -1;
	}
	free(st->part);
	st->part = NULL;
	st->plen = st->pcap = 0;
	st->state = S_DONE;
	st->end = (uint8_t)how;
	switch (how) {
	case E_END: g_ended++; break;
	case E_COUNT: g_counted++; break;
	case E_EOF: g_eof++; break;
	default: g_failed++;
	}
	if (how == E_END || how == E_COUNT)
		if (t > g_last_done_us)
			g_last_done_us = t;
}

static void mark_ready(struct stream *st)
{
	if (st->ready)
		return;
	st->ready = 1;
	g_ready++;
	g_pending--;
}

/* One event (the text between blank lines). Returns 0, or -1 when the stream
 * is done. */
static int on_event(struct stream *st, const char *p, const char *end, int64_t t)
{
	const char *type = NULL, *data = NULL, *data_end = NULL, *begin = p;
	size_t type_len = 0;
	int has_id = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *ce = (le > p && le[-1] == '\r') ? le - 1 : le;
		if (ce - p >= 6 && memcmp(p, "event:", 6) == 0) {
			type = p + 6;
			if (type < ce && *type == ' ')
				type++;
			type_len = (size_t)(ce - type);
		} else if (ce - p >= 3 && memcmp(p, "id:", 3) == 0) {
			has_id = 1;
		} else if (ce - p >= 5 && memcmp(p, "data:", 5) == 0) {
			data = p + 5;
			if (data < ce && *data == ' ')
				data++;
			data_end = ce;
		}
		p = nl ? nl + 1 : end;
	}
	if (type == NULL && data == NULL)
		return 0; /* retry:, comments */
	if (type && g_ready_type && type_len == strlen(g_ready_type) &&
	    memcmp(type, g_ready_type, type_len) == 0) {
		mark_ready(st);
		return 0;
	}
	if (type && type_len == 3 && memcmp(type, "end", 3) == 0) {
		stream_finish(st, E_END, t);
		return -1;
	}
	if (!st->ready) {
		st->replayed++;
		g_replayed++;
		return 0;
	}
	st->deliveries++;
	g_deliveries++;
	g_durable += (uint64_t)has_id;
	g_live_bytes += (uint64_t)(end - begin) + 1; /* and the blank line */
	if (g_first_live_us < 0 || t < g_first_live_us)
		g_first_live_us = t;
	if (t > g_last_live_us)
		g_last_live_us = t;
	int64_t ts;
	const char *k = data ? memmem(data, (size_t)(data_end - data), "\"ts\":\"", 6) : NULL;
	if (k && parse_rfc3339(k + 6, data_end, &ts) == 0) {
		lat_add(t - ts);
		if (g_dump) {
			const char *q = memmem(data, (size_t)(data_end - data), "\"seq\":", 6);
			fprintf(g_dump, "%ld %ld %lld %lld\n", (long)(st - g_st),
			        q ? atol(q + 6) : -1L, (long long)t, (long long)(t - ts));
		}
	} else {
		g_no_ts++;
	}
	if (g_k > 0 && st->deliveries >= (uint64_t)g_k) {
		stream_finish(st, E_COUNT, t);
		return -1;
	}
	return 0;
}

/* Consumes what it can of buf; returns how much, or -1 when the stream is
 * done. */
static long consume(struct stream *st, const char *buf, size_t len, int64_t t)
{
	const char *p = buf, *end = buf + len;
	if (st->state == S_HEAD) {
		const char *h = memmem(p, len, "\r\n\r\n", 4);
		if (h == NULL) {
			if (len <= 16384)
				return 0;
			g_fail_status++;
			stream_finish(st, E_FAILED, t);
			return -1;
		}
		if (len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || memcmp(p + 8, " 200", 4) != 0) {
			if (g_failed < 3)
				fprintf(stderr, "sse_client: a stream got: %.*s\n",
				        (int)(memchr(p, '\r', len)
				                      ? (const char *)memchr(p, '\r', len) - p
				                      : 40),
				        p);
			g_fail_status++;
			stream_finish(st, E_FAILED, t);
			return -1;
		}
		for (const char *q = p; q + 8 < h; q++)
			if ((*q == 'c' || *q == 'C') && strncasecmp(q, "chunked", 7) == 0) {
				if (g_failed < 3)
					fprintf(stderr,
					        "sse_client: a chunked stream (not supported)\n");
				g_fail_status++;
				stream_finish(st, E_FAILED, t);
				return -1;
			}
		st->state = S_BODY;
		if (!g_ready_type)
			mark_ready(st);
		p = h + 4;
	}
	for (;;) {
		/* events end with a blank line: \n\n (or \r\n\r\n) */
		const char *e = memmem(p, (size_t)(end - p), "\n\n", 2);
		const char *e2 = memmem(p, (size_t)(end - p), "\n\r\n", 3);
		size_t sep = 2;
		if (e2 && (!e || e2 < e)) {
			e = e2;
			sep = 3;
		}
		if (!e)
			break;
		if (on_event(st, p, e + 1, t) < 0)
			return -1;
		p = e + sep;
	}
	return p - buf;
}

static void keep_part(struct stream *st, const char *p, size_t n)
{
	if (n == 0) {
		st->plen = 0;
		return;
	}
	if (n > st->pcap) {
		st->pcap = (uint32_t)(n < 512 ? 512 : n * 2);
		char *np = malloc(st->pcap);
		if (!np)
			die("malloc");
		memmove(np, p, n);
		free(st->part);
		st->part = np;
	} else {
		memmove(st->part, p, n);
	}
	st->plen = (uint32_t)n;
}

static void on_readable(struct stream *st)
{
	for (;;) {
		ssize_t r = read(st->fd, g_rb, sizeof g_rb);
		int64_t t = now_us(CLOCK_REALTIME);
		if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN)) {
			/* closed: after the head, a stream that ended without `end` */
			if (st->state != S_BODY)
				g_fail_closed++;
			stream_finish(st, st->state == S_BODY ? E_EOF : E_FAILED, t);
			return;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		g_bytes += (uint64_t)r;
		const char *buf = g_rb;
		size_t len = (size_t)r;
		if (st->plen > 0) { /* join the carried part and the new bytes */
			if (st->plen + len > st->pcap) {
				st->pcap = (st->plen + (uint32_t)len) * 2;
				st->part = realloc(st->part, st->pcap);
				if (!st->part)
					die("realloc");
			}
			memcpy(st->part + st->plen, g_rb, len);
			st->plen += (uint32_t)len;
			long c = consume(st, st->part, st->plen, t);
			if (c < 0)
				return;
			keep_part(st, st->part + c, st->plen - (size_t)c);
		} else {
			long c = consume(st, buf, len, t);
			if (c < 0)
				return;
			keep_part(st, buf + c, len - (size_t)c);
		}
		if ((size_t)r < sizeof g_rb)
			return;
	}
}

static void start_stream(long i)
{
	struct stream *st = &g_st[i];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	g_started++;
	g_pending++;
	st->state = S_CONNECTING;
	if (fd < 0) {
		if (g_failed < 3)
			fprintf(stderr, "sse_client: socket: %s\n", strerror(errno));
		g_fail_connect++;
		st->fd = -1;
		stream_finish(st, E_FAILED, now_us(CLOCK_REALTIME));
		return;
	}
	st->fd = fd;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0 && errno != EINPROGRESS) {
		if (g_failed < 3)
			fprintf(stderr, "sse_client: connect: %s\n", strerror(errno));
		g_fail_connect++;
		stream_finish(st, E_FAILED, now_us(CLOCK_REALTIME));
		return;
	}
	struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
}

static void on_writable(struct stream *st, long i)
{
	int err = 0;
	socklen_t el = sizeof err;
	getsockopt(st->fd, SOL_SOCKET, SO_ERROR, &err, &el);
	if (err) {
		if (g_failed < 3)
			fprintf(stderr, "sse_client: connect: %s\n", strerror(err));
		g_fail_connect++;
		stream_finish(st, E_FAILED, now_us(CLOCK_REALTIME));
		return;
	}
	ssize_t w = write(st->fd, g_req, g_reqlen);
	if (w != (ssize_t)g_reqlen) {
		g_fail_closed++;
		stream_finish(st, E_FAILED, now_us(CLOCK_REALTIME));
		return;
	}
	st->state = S_HEAD;
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
	if (epoll_ctl(g_ep, EPOLL_CTL_MOD, st->fd, &ev) < 0)
		die("epoll_ctl");
}

/* --- publisher ------------------------------------------------------------ */

static void fmt_rfc3339(int64_t us, char *out, size_t n)
{
	time_t s = (time_t)(us / 1000000);
	struct tm tm;
	gmtime_r(&s, &tm);
	snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(us % 1000000));
}

static void pub_next(void)
{
	if (g_pub_sent >= g_pub_m) {
		g_pub_end_us = now_us(CLOCK_MONOTONIC);
		return;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr) < 0)
		die("publisher connect");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	char ts[96], body[65536], req[70000];
	fmt_rfc3339(now_us(CLOCK_REALTIME), ts, sizeof ts);
	int bl = snprintf(body, sizeof body, "{\"seq\":%ld,\"ts\":\"%s\",\"pad\":\"",
	                  g_pub_sent + 1, ts);
	while (bl < g_pub_size - 2 && bl < (int)sizeof body - 3)
		body[bl++] = 'x';
	body[bl++] = '"';
	body[bl++] = '}';
	int rl = snprintf(req, sizeof req,
	                  "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
	                  "Content-Length: %d\r\nConnection: close\r\n\r\n%.*s",
	                  g_pub_path, g_host, bl, bl, body);
	if (write(fd, req, (size_t)rl) != rl)
		die("publisher write");
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = PUB_TAG};
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
	g_pub_fd = fd;
	g_pub_rlen = 0;
	g_pub_sent++;
}

static void pub_readable(void)
{
	for (;;) {
		char b[4096];
		ssize_t r = read(g_pub_fd, b, sizeof b);
		if (r > 0) {
			size_t room = sizeof g_pub_resp - 1 - g_pub_rlen;
			size_t c = (size_t)r < room ? (size_t)r : room;
			memcpy(g_pub_resp + g_pub_rlen, b, c);
			g_pub_rlen += c;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		break; /* EOF (Connection: close) or error */
	}
	g_pub_resp[g_pub_rlen] = '\0';
	if (g_pub_rlen > 12 && memcmp(g_pub_resp, "HTTP/1.", 7) == 0 && g_pub_resp[9] == '2') {
		g_pub_ok++;
	} else {
		if (g_pub_err++ < 3)
			fprintf(stderr, "sse_client: publish answered: %.80s\n", g_pub_resp);
	}
	close(g_pub_fd);
	g_pub_fd = -1;
	pub_next();
}

/* --- main ---------------------------------------------------------------------- */

static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

static double pct(double p)
{
	if (g_nlat == 0)
		return -1;
	size_t i = (size_t)(p * (double)(g_nlat - 1) + 0.5);
	return g_lat[i] / 1000.0;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: sse_client -a HOST:PORT -u PATH -n N [-c C] [-R TYPE] [-K K] "
	        "[-r FILE] [-g FILE] [-P PATH -M M -S B] [-T S] [-x PREFIX] [-H 1.0|1.1]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *addr = NULL, *ready_file = NULL, *go_file = NULL, *prefix = "";
	double timeout_s = 300;
	int o;
	while ((o = getopt(argc, argv, "a:u:n:c:R:K:r:g:P:M:S:T:x:H:D:")) != -1) {
		switch (o) {
		case 'D':
			g_dump = fopen(optarg, "w");
			if (!g_dump)
				die(optarg);
			break;
		case 'a': addr = optarg; break;
		case 'u': g_path = optarg; break;
		case 'n': g_n = atol(optarg); break;
		case 'c': g_conc = atol(optarg); break;
		case 'R': g_ready_type = *optarg ? optarg : NULL; break;
		case 'K': g_k = atol(optarg); break;
		case 'r': ready_file = optarg; break;
		case 'g': go_file = optarg; break;
		case 'P': g_pub_path = optarg; break;
		case 'M': g_pub_m = atol(optarg); break;
		case 'S': g_pub_size = atol(optarg); break;
		case 'T': timeout_s = atof(optarg); break;
		case 'x': prefix = optarg; break;
		case 'H': g_http = optarg; break;
		default: usage();
		}
	}
	if (!addr || !g_path || g_n <= 0 || g_conc <= 0 || g_pub_size < 40 || g_pub_size > 60000)
		usage();
	char host[64];
	const char *colon = strrchr(addr, ':');
	if (!colon || colon - addr >= (long)sizeof host)
		usage();
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	g_host = host;
	g_addr.sin_family = AF_INET;
	g_addr.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &g_addr.sin_addr) != 1)
		usage();
	g_reqlen = (size_t)snprintf(g_req, sizeof g_req,
	                            "GET %s HTTP/%s\r\nHost: %s\r\nAccept: text/event-stream\r\n"
	                            "Cache-Control: no-cache\r\n\r\n",
	                            g_path, g_http, addr);

	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (rlim_t)g_n + 16 > rl.rlim_cur)
		fprintf(stderr, "sse_client: warning: %ld streams but RLIMIT_NOFILE is %lu\n", g_n,
		        (unsigned long)rl.rlim_cur);

	g_st = calloc((size_t)g_n, sizeof *g_st);
	if (!g_st)
		die("calloc");
	for (long i = 0; i < g_n; i++)
		g_st[i].fd = -1;
	g_ep = epoll_create1(EPOLL_CLOEXEC);
	if (g_ep < 0)
		die("epoll_create1");

	g_t0_us = now_us(CLOCK_MONOTONIC);
	int64_t deadline = g_t0_us + (int64_t)(timeout_s * 1e6);
	int ready_written = 0, go = go_file == NULL, pub_started = 0;
	struct epoll_event evs[1024];
	int timed_out = 0;
	for (;;) {
		while (g_started < g_n && g_pending < g_conc)
			start_stream(g_started);
		long finished = g_ended + g_counted + g_eof + g_failed;
		if (!ready_written && g_started == g_n && g_pending == 0) {
			g_all_ready_us = now_us(CLOCK_MONOTONIC);
			if (ready_file)
				write_ready_file(ready_file);
			ready_written = 1;
		}
		if (ready_written && !go) {
			struct stat sb;
			go = stat(go_file, &sb) == 0;
		}
		if (ready_written && go && g_pub_path && !pub_started) {
			pub_started = 1;
			g_pub_start_us = now_us(CLOCK_MONOTONIC);
			pub_next();
		}
		/* done when every stream is, and the publisher (if any) has its
		 * last answer */
		if (finished >= g_n && !(g_pub_path && pub_started && g_pub_fd >= 0))
			break;
		int64_t now = now_us(CLOCK_MONOTONIC);
		if (now >= deadline) {
			timed_out = 1;
			break;
		}
		int wait_ms = (ready_written && !go) ? 10 : 100;
		int n = epoll_wait(g_ep, evs, 1024, wait_ms);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int j = 0; j < n; j++) {
			uint64_t tag = evs[j].data.u64;
			if (tag == PUB_TAG) {
				pub_readable();
				continue;
			}
			struct stream *st = &g_st[tag];
			if (st->state == S_CONNECTING)
				on_writable(st, (long)tag);
			else if (st->state == S_HEAD || st->state == S_BODY)
				on_readable(st);
		}
	}
	(void)timed_out;
	long unfinished = 0;
	for (long i = 0; i < g_n; i++)
		if (g_st[i].state != S_DONE)
			unfinished++;

	uint32_t dmin = UINT32_MAX, dmax = 0;
	for (long i = 0; i < g_n; i++) {
		if (!g_st[i].ready)
			continue;
		if (g_st[i].deliveries < dmin)
			dmin = g_st[i].deliveries;
		if (g_st[i].deliveries > dmax)
			dmax = g_st[i].deliveries;
	}
	if (dmin == UINT32_MAX)
		dmin = 0;
	qsort(g_lat, g_nlat, sizeof *g_lat, cmp_i32);

	const char *x = prefix;
	printf("%sstreams %ld\n", x, g_n);
	printf("%sstreams_ready %ld\n", x, g_ready);
	printf("%sstreams_failed %ld\n", x, g_failed);
	printf("%sstreams_failed_connect %ld\n", x, g_fail_connect);
	printf("%sstreams_failed_status %ld\n", x, g_fail_status);
	printf("%sstreams_failed_closed %ld\n", x, g_fail_closed);
	printf("%sstreams_ended %ld\n", x, g_ended + g_counted);
	printf("%sstreams_eof_before_end %ld\n", x, g_eof);
	printf("%sstreams_unfinished %ld\n", x, unfinished);
	if (g_all_ready_us >= 0)
		printf("%sconnect_s %.3f\n", x, (g_all_ready_us - g_t0_us) / 1e6);
	else
		printf("%sconnect_s nan\n", x);
	printf("%sreplayed_events %llu\n", x, (unsigned long long)g_replayed);
	printf("%sdeliveries %llu\n", x, (unsigned long long)g_deliveries);
	printf("%sdurable_deliveries %llu\n", x, (unsigned long long)g_durable);
	printf("%sdeliveries_per_stream_min %u\n", x, dmin);
	printf("%sdeliveries_per_stream_max %u\n", x, dmax);
	int64_t last = g_last_done_us > g_last_live_us ? g_last_done_us : g_last_live_us;
	if (g_first_live_us >= 0 && last > g_first_live_us) {
		double s = (last - g_first_live_us) / 1e6;
		printf("%slive_s %.3f\n", x, s);
		printf("%sdeliveries_per_s %.0f\n", x, (double)g_deliveries / s);
	} else {
		printf("%slive_s nan\n%sdeliveries_per_s nan\n", x, x);
	}
	if (g_nlat > 0) {
		printf("%slatency_p50_ms %.3f\n", x, pct(0.50));
		printf("%slatency_p99_ms %.3f\n", x, pct(0.99));
		printf("%slatency_max_ms %.3f\n", x, g_lat[g_nlat - 1] / 1000.0);
		printf("%slatency_min_ms %.3f\n", x, g_lat[0] / 1000.0);
	} else {
		printf("%slatency_p50_ms nan\n%slatency_p99_ms nan\n%slatency_max_ms nan\n", x, x,
		       x);
	}
	if (g_no_ts)
		printf("%sdeliveries_without_ts %llu\n", x, (unsigned long long)g_no_ts);
	printf("%sbytes %llu\n", x, (unsigned long long)g_bytes);
	printf("%slive_bytes %llu\n", x, (unsigned long long)g_live_bytes);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("%sclient_cpu_s %.2f\n", x,
	       ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	if (g_pub_path) {
		printf("%spublished %ld\n", x, g_pub_ok);
		printf("%spublish_errors %ld\n", x, g_pub_err);
		if (g_pub_start_us >= 0 && g_pub_end_us > g_pub_start_us)
			printf("%spublish_s %.3f\n", x, (g_pub_end_us - g_pub_start_us) / 1e6);
	}
	if (g_dump)
		fclose(g_dump);
	fflush(stdout);
	return 0;
}
