/* outstream: the body of a response whose socket the server handed over
 * (http_req_take_stream_head): downloads, followed logs and SSE streams. Writes go
 * straight to the socket; only what it refuses is queued, up to a bound, and
 * on_drained asks for more once the queue is empty again — so a producer
 * that writes only from on_drained holds at most one chunk per client. The
 * peer leaving (EOF, reset) or a write error calls on_closed once; the owner
 * then frees the stream (outstream_free from any callback, or right after
 * a failed outstream_write, cancels a pending on_closed). */
#ifndef SL_HTTP_OUTSTREAM_H
#define SL_HTTP_OUTSTREAM_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct outstream;

typedef void (*outstream_cb)(struct outstream *os, void *arg);

/* Takes fd (non-blocking). max_pending bounds the queue (bytes). */
struct outstream *outstream_new(struct event_base *base, int fd, size_t max_pending,
                                outstream_cb on_drained, outstream_cb on_closed, void *arg);
/* False when the stream is closed or the queue would pass its bound (the
 * stream is then closed: on_closed fires from the loop). */
bool outstream_write(struct outstream *os, const void *data, size_t len);
size_t outstream_pending(const struct outstream *os);
/* The stream closed because a write would have passed max_pending: the
 * peer stopped reading (as opposed to leaving or a write error). */
bool outstream_overflowed(const struct outstream *os);
/* The body is complete: the socket closes once the queue is written. No
 * callback fires afterwards and the stream frees itself; the owner forgets
 * it. */
void outstream_end(struct outstream *os);
/* Closes at once; no callback afterwards. NULL is a no-op. */
void outstream_free(struct outstream *os);

#endif
