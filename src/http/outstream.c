/* outstream (outstream.h). */
#include "http/outstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/xmalloc.h"

struct outstream {
	int fd;
	struct event *rd, *wr, *closed_ev;
	struct evbuffer *pend;
	size_t max_pending;
	bool closed, ending, overflowed;
	outstream_cb on_drained, on_closed;
	void *arg;
};

static void os_close(struct outstream *os)
{
	if (os->closed)
		return;
	os->closed = true;
	event_del(os->rd);
	event_del(os->wr);
	if (os->ending) {
		outstream_free(os);
		return;
	}
	event_active(os->closed_ev, EV_TIMEOUT, 0); /* on_closed from the loop */
}

static void closed_cb(evutil_socket_t fd, short what, void *arg)
{
	struct outstream *os = arg;
	(void)fd;
	(void)what;
	os->on_closed(os, os->arg);
}

static void finish(struct outstream *os)
{
	/* everything is written: FIN, then close once the peer has read it */
	shutdown(os->fd, SHUT_WR);
	outstream_free(os);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct outstream *os = arg;
	(void)what;
	int n = evbuffer_write(os->pend, fd);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		os_close(os);
		return;
	}
	if (evbuffer_get_length(os->pend) > 0) {
		event_add(os->wr, NULL);
		return;
	}
	if (os->ending)
		finish(os);
	else if (os->on_drained)
		os->on_drained(os, os->arg);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct outstream *os = arg;
	(void)what;
	char scratch[512];
	for (;;) {
		ssize_t r = read(fd, scratch, sizeof scratch);
		if (r > 0)
			continue; /* nothing a client says matters now */
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r < 0 && errno == EINTR)
			continue;
		os_close(os); /* EOF or error: the client left */
		return;
	}
}

struct outstream *outstream_new(struct event_base *base, int fd, size_t max_pending,
                                outstream_cb on_drained, outstream_cb on_closed, void *arg)
{
	struct outstream *os = xcalloc(1, sizeof *os);
	os->fd = fd;
	os->max_pending = max_pending;
	os->on_drained = on_drained;
	os->on_closed = on_closed;
	os->arg = arg;
	os->pend = evbuffer_new();
	os->rd = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, os);
	os->wr = event_new(base, fd, EV_WRITE, write_cb, os);
	os->closed_ev = event_new(base, -1, 0, closed_cb, os);
	event_add(os->rd, NULL);
	return os;
}

bool outstream_write(struct outstream *os, const void *data, size_t len)
{
	if (os->closed)
		return false;
	const char *p = data;
	size_t off = 0;
	if (evbuffer_get_length(os->pend) == 0) {
		while (off < len) {
			ssize_t w = write(os->fd, p + off, len - off);
			if (w > 0) {
				off += (size_t)w;
				continue;
			}
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			os_close(os);
			return false;
		}
	}
	if (off < len) {
		if (evbuffer_get_length(os->pend) + (len - off) > os->max_pending) {
			os->overflowed = true;
			os_close(os);
			return false;
		}
		evbuffer_add(os->pend, p + off, len - off);
		event_add(os->wr, NULL);
	}
	return true;
}

size_t outstream_pending(const struct outstream *os)
{
	return evbuffer_get_length(os->pend);
}

bool outstream_overflowed(const struct outstream *os)
{
	return os->overflowed;
}

void outstream_end(struct outstream *os)
{
	os->ending = true;
	if (os->closed)
		outstream_free(os);
	else if (evbuffer_get_length(os->pend) == 0)
		finish(os);
}

void outstream_free(struct outstream *os)
{
	if (os == NULL)
		return;
	event_free(os->rd);
	event_free(os->wr);
	event_free(os->closed_ev);
	evbuffer_free(os->pend);
	close(os->fd);
	free(os);
}
