/* sampler: a periodic timer on the loop that updates the process gauges —
 * resident memory, open file descriptors, scratch disk use — and measures
 * event-loop lag as the timer's drift. It owns its timer. */
#ifndef SL_CORE_SAMPLER_H
#define SL_CORE_SAMPLER_H

#include <stdint.h>

struct event_base;
struct sampler;

/* Starts sampling every interval_ms (and once at once). scratch_dir is the
 * directory whose file system is watched (it need not exist yet: its nearest
 * existing parent is measured). Freed with sampler_free(). */
struct sampler *sampler_start(struct event_base *base, const char *scratch_dir,
                              int64_t interval_ms);
void sampler_free(struct sampler *s);

/* Pure readers, exposed for tests. */
double sampler_read_rss_mb(void);
long sampler_count_open_fds(void);
/* Used share of the file system holding path, in percent; -1 if unknown. */
double sampler_disk_used_pct(const char *path);

#endif
