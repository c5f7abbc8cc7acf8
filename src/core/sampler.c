/* The resource sampler. Loop lag is how late the periodic timer fires: on an
 * idle loop it is a few microseconds; a handler that blocks for 200 ms shows
 * up as a 200 ms observation. The readings use /proc and statvfs, which are
 * small local reads, fine on the loop once a second. */
#include "core/sampler.h"

#include <dirent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/metrics.h"
#include "core/xmalloc.h"

struct sampler {
	struct event *timer;
	char *scratch_dir;
	int64_t interval_us;
	int64_t due_us; /* monotonic time the timer should fire */
};

double sampler_read_rss_mb(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	if (f == NULL)
		return -1;
	unsigned long size, resident;
	int n = fscanf(f, "%lu %lu", &size, &resident);
	fclose(f);
	if (n != 2)
		return -1;
	return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

long sampler_count_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL)
		return -1;
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory stream's own descriptor */
}

double sampler_disk_used_pct(const char *path)
{
	char *p = xstrdup(path && *path ? path : ".");
	struct statvfs st;
	/* Walk up to the nearest existing directory. */
	while (statvfs(p, &st) != 0) {
		char *slash = strrchr(p, '/');
		if (slash == NULL || slash == p) {
			bool root = slash == p;
			free(p);
			if (!root)
				return -1;
			p = xstrdup("/");
			if (statvfs(p, &st) != 0) {
				free(p);
				return -1;
			}
			break;
		}
		*slash = '\0';
	}
	free(p);
	if (st.f_blocks == 0)
		return -1;
	/* Like df: used / (used + available to unprivileged users). */
	double used = (double)(st.f_blocks - st.f_bfree);
	double avail = (double)st.f_bavail;
	return used + avail > 0 ? 100.0 * used / (used + avail) : -1;
}

static void sampler_sample(struct sampler *s)
{
	double rss = sampler_read_rss_mb();
	if (rss >= 0)
		metric_set(metrics_default_get(M_PROC_MEMORY_RSS_MB), rss);
	long fds = sampler_count_open_fds();
	if (fds >= 0)
		metric_set(metrics_default_get(M_PROC_OPEN_FDS), (double)fds);
	double pct = sampler_disk_used_pct(s->scratch_dir);
	if (pct >= 0)
		metric_set(metrics_default_get(M_SCRATCH_DISK_USED_PCT), pct);
}

static void sampler_arm(struct sampler *s)
{
	s->due_us = clock_mono_us() + s->interval_us;
	struct timeval tv = {.tv_sec = s->interval_us / 1000000,
	                     .tv_usec = s->interval_us % 1000000};
	evtimer_add(s->timer, &tv);
}

static void sampler_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sampler *s = arg;
	int64_t lag = clock_mono_us() - s->due_us;
	metric_observe(metrics_default_get(M_EVENT_LOOP_LAG_MS),
	               lag > 0 ? (double)lag / 1000.0 : 0);
	sampler_sample(s);
	sampler_arm(s);
}

struct sampler *sampler_start(struct event_base *base, const char *scratch_dir, int64_t interval_ms)
{
	struct sampler *s = xcalloc(1, sizeof *s);
	s->scratch_dir = xstrdup(scratch_dir ? scratch_dir : ".");
	s->interval_us = (interval_ms > 0 ? interval_ms : 1000) * 1000;
	s->timer = evtimer_new(base, sampler_tick_cb, s);
	metric_set(metrics_default_get(M_PROCESS_START_TIME_SECONDS),
	           (double)clock_now_us() / 1000000.0);
	sampler_sample(s);
	sampler_arm(s);
	return s;
}

void sampler_free(struct sampler *s)
{
	if (s == NULL)
		return;
	event_free(s->timer);
	free(s->scratch_dir);
	free(s);
}
