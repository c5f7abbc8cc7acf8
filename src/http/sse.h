/* sse: live job events over Server-Sent Events (ARCHITECTURE §8).
 * GET /v1/jobs/{id}/events replays the job's durable events after
 * Last-Event-ID (the job's gapless seq) from job_events, then sends a
 * snapshot (the job as GET /v1/jobs/{id} shows it), then goes live: events
 * of this instance come from the event bus, those of other instances are
 * fetched from job_events when their NOTIFY arrives. After the job's
 * terminal event it sends `end` and closes. Each stream owns its socket
 * (handed off after the response head, TOOLCHAIN §9): events are written
 * through with write(); only what the kernel refuses is queued, up to a
 * bound past which the client is dropped. */
#ifndef SL_HTTP_SSE_H
#define SL_HTTP_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct api_ctx;
struct router;
struct sse_hub;

#define SSE_HEARTBEAT_MS 15000
#define SSE_RETRY_MS 3000
#define SSE_MAX_PENDING_BYTES (256u * 1024) /* queued past the socket: then dropped */
#define SSE_REPLAY_BATCH 1000
#define SSE_SNDBUF_BYTES (128 * 1024) /* the stream socket's kernel send buffer */

struct sse_hub *sse_hub_new(struct api_ctx *ctx);
/* Closes every stream; no callback fires afterwards. NULL is a no-op. */
void sse_hub_free(struct sse_hub *hub);
/* Shutdown: every stream is closed (clients resume elsewhere with
 * Last-Event-ID); new streams are refused with 503. */
void sse_hub_drain(struct sse_hub *hub);
/* A NOTIFY on the jobs channel ("<job id> <rev>"): streams of that job
 * fetch what they have not seen. */
void sse_hub_on_job_notify(struct sse_hub *hub, const char *payload);
size_t sse_hub_streams(const struct sse_hub *hub);

bool api_sse_register(struct router *r, struct sse_hub *hub) __attribute__((warn_unused_result));

#endif
