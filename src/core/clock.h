/* clock: wall-clock and monotonic time in microseconds, and RFC 3339
 * formatting. Pure except for reading the clocks. */
#ifndef SL_CORE_CLOCK_H
#define SL_CORE_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Microseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t clock_now_us(void);
/* Microseconds on CLOCK_MONOTONIC, for durations. */
int64_t clock_mono_us(void);
/* Writes "2026-11-25T22:38:23.123456Z" (27 bytes + NUL); out needs 32 bytes. */
size_t clock_fmt_rfc3339_us(char *out, size_t size, int64_t epoch_us);
/* Writes "2026-11-25 22:38:23.123" (the pipeline-log shape); out needs 32 bytes. */
size_t clock_fmt_log_ms(char *out, size_t size, int64_t epoch_us);

/* Parses RFC 3339 ("2026-11-25T22:38:23Z", fractions and +hh:mm offsets
 * allowed) into epoch microseconds. Pure. */
bool clock_parse_rfc3339(const char *s, int64_t *out_us);

#endif
