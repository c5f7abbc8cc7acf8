/* Clocks and timestamp formatting shared by logs, rows and events. */
#include "core/clock.h"

#include <stdio.h>
#include <time.h>

int64_t clock_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t clock_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void split(int64_t us, struct tm *tm, long *frac_us)
{
	time_t secs = (time_t)(us / 1000000);
	long frac = (long)(us % 1000000);
	if (frac < 0) {
		frac += 1000000;
		secs -= 1;
	}
	gmtime_r(&secs, tm);
	*frac_us = frac;
}

size_t clock_fmt_rfc3339_us(char *out, size_t size, int64_t epoch_us)
{
	struct tm tm;
	long frac;
	split(epoch_us, &tm, &frac);
	int n = snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
	return n < 0 ? 0 : (size_t)n;
}

size_t clock_fmt_log_ms(char *out, size_t size, int64_t epoch_us)
{
	struct tm tm;
	long frac;
	split(epoch_us, &tm, &frac);
	int n = snprintf(out, size, "%04d-%02d-%02d %02d:%02d:%02d.%03ld", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac / 1000);
	return n < 0 ? 0 : (size_t)n;
}
