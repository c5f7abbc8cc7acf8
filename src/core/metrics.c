/* The metrics registry: declarations, series lookup, updates and the two
 * expositions. Everything a hot path touches is preallocated on a label
 * tuple's first use; the formatters allocate freely since they run per scrape.
 * Numbers are written with the shortest "%.*g" that reads back to the same
 * double (the daemon runs in the C locale, so '.' is the decimal point). */
#include "core/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/xmalloc.h"

#define PROM_PREFIX "stageline_"
#define NAME_MAX_LEN 128
#define SERIES_HARD_MAX (1u << 20) /* slot indexes are uint32_t */

struct metric_series {
	struct metrics_registry *reg;
	struct metric *m;
	uint64_t hash;
	double value; /* counter, gauge; histogram: sum */
	uint64_t count; /* histogram observations */
	const char *values[METRIC_MAX_LABELS]; /* copies, in the same allocation */
	uint64_t buckets[]; /* histogram: nbuckets + 1 (the last is +Inf), not cumulative */
};

struct metric {
	struct metrics_registry *reg;
	char *name; /* reference name */
	char *prom; /* Prometheus family name */
	char *help;
	enum metric_type type;
	enum metric_unit unit;
	size_t nlabels;
	char *labels[METRIC_MAX_LABELS];
	double *bounds;
	size_t nbuckets;
	size_t max_series;
	bool overflowed;
	struct metric_series **series; /* in creation order */
	size_t nseries;
	size_t series_cap;
	uint32_t *slots; /* open addressing: series index + 1, 0 = empty */
	size_t nslots; /* a power of two, 0 until the first labelled series */
};

struct metrics_registry {
	bool enabled;
	metrics_overflow_cb overflow_cb;
	void *overflow_arg;
	struct metric **metrics; /* in declaration order */
	size_t nmetrics;
	size_t metrics_cap;
	bool has_catalog;
	struct metric *catalog[METRIC_ID_COUNT];
	size_t nseries;
	size_t allocations;
	uint64_t dropped;
};

/* clang-format off */
/* The catalog's bucket sets, in the reference unit (milliseconds). */
static const double buckets_none[] = {0};
static const double buckets_http[] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500,
				      1000, 2500, 5000, 10000, 30000, 60000};
static const double buckets_db[] = {0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
				    5000, 10000, 30000};
static const double buckets_loop[] = {0.1, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
				      5000, 10000};
static const double buckets_external[] = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
					  30000, 60000, 120000, 300000, 600000, 1800000, 3600000};
/* Stages and whole jobs: 10 ms (no-op modules) to a day (long media work). */
static const double buckets_long[] = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
				      120000, 300000, 600000, 1800000, 3600000, 7200000, 14400000,
				      43200000, 86400000};

#define UNPAREN_(...) __VA_ARGS__
#define COUNT_OF_(a) (sizeof(a) / sizeof((a)[0]))

static const struct metric_def catalog[METRIC_ID_COUNT] = {
#define CATALOG_ROW_(id, type_, name_, labels_, bset_, max_, help_) \
	[id] = {.name = name_, \
		.type = type_, \
		.help = help_, \
		.labels = {UNPAREN_ labels_}, \
		.buckets = buckets_##bset_, \
		.nbuckets = (type_) == METRIC_HISTOGRAM ? COUNT_OF_(buckets_##bset_) : 0, \
		.max_series = max_},
	METRICS_CATALOG(CATALOG_ROW_)
#undef CATALOG_ROW_
};
/* clang-format on */

/* Allocation, counted so tests can prove the hot path makes none. */

static void *reg_alloc(struct metrics_registry *reg, size_t n)
{
	reg->allocations++;
	return xcalloc(1, n);
}

static void *reg_realloc(struct metrics_registry *reg, void *p, size_t n)
{
	reg->allocations++;
	return xrealloc(p, n);
}

static char *reg_strdup(struct metrics_registry *reg, const char *s)
{
	reg->allocations++;
	return xstrdup(s);
}

/* Registry. */

struct metrics_registry *metrics_registry_new(void)
{
	struct metrics_registry *reg = xcalloc(1, sizeof *reg);
	reg->enabled = true;
	reg->allocations = 1;
	return reg;
}

static void metric_free(struct metric *m)
{
	for (size_t i = 0; i < m->nseries; i++)
		free(m->series[i]);
	free(m->series);
	free(m->slots);
	for (size_t i = 0; i < m->nlabels; i++)
		free(m->labels[i]);
	free(m->bounds);
	free(m->help);
	free(m->prom);
	free(m->name);
	free(m);
}

void metrics_registry_free(struct metrics_registry *reg)
{
	if (!reg)
		return;
	for (size_t i = 0; i < reg->nmetrics; i++)
		metric_free(reg->metrics[i]);
	free(reg->metrics);
	free(reg);
}

void metrics_set_enabled(struct metrics_registry *reg, bool enabled)
{
	if (reg)
		reg->enabled = enabled;
}

bool metrics_enabled(const struct metrics_registry *reg)
{
	return reg && reg->enabled;
}

void metrics_set_overflow_cb(struct metrics_registry *reg, metrics_overflow_cb fn, void *arg)
{
	if (!reg)
		return;
	reg->overflow_cb = fn;
	reg->overflow_arg = arg;
}

void metrics_registry_stats(const struct metrics_registry *reg, struct metrics_stats *out)
{
	if (!out)
		return;
	memset(out, 0, sizeof *out);
	if (!reg)
		return;
	out->metrics = reg->nmetrics;
	out->series = reg->nseries;
	out->allocations = reg->allocations;
	out->dropped = reg->dropped;
}

/* Declarations. */

static bool ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);
	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

static bool name_valid(const char *name, enum metric_type type)
{
	size_t len = strlen(name);
	if (len == 0 || len > NAME_MAX_LEN || name[0] < 'a' || name[0] > 'z')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.'))
			return false;
		if (c == '.' && (name[i + 1] == '.' || name[i + 1] == '_' || name[i + 1] == '\0'))
			return false;
	}
	if (name[len - 1] == '_')
		return false;
	/* Prometheus (and promtool) reserve these suffixes. */
	bool total = ends_with(name, len, "_total");
	if ((type == METRIC_COUNTER) != total || (total && len == strlen("_total")))
		return false;
	return !ends_with(name, len, "_bucket") && !ends_with(name, len, "_count") &&
	       !ends_with(name, len, "_sum");
}

static bool label_name_valid(const char *l, enum metric_type type)
{
	if (!l[0] || (l[0] >= '0' && l[0] <= '9') || (l[0] == '_' && l[1] == '_'))
		return false;
	for (const char *p = l; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return strlen(l) <= NAME_MAX_LEN && !(type == METRIC_HISTOGRAM && strcmp(l, "le") == 0);
}

static bool def_valid(const struct metric_def *d, size_t *nlabels)
{
	if (!d->name || !d->help || d->type > METRIC_HISTOGRAM || !name_valid(d->name, d->type))
		return false;
	size_t n = 0;
	while (n < METRIC_MAX_LABELS && d->labels[n])
		n++;
	for (size_t i = 0; i < n; i++) {
		if (!label_name_valid(d->labels[i], d->type))
			return false;
		for (size_t j = 0; j < i; j++)
			if (strcmp(d->labels[i], d->labels[j]) == 0)
				return false;
	}
	*nlabels = n;
	if (d->type != METRIC_HISTOGRAM)
		return true;
	if (!d->buckets || d->nbuckets == 0 || d->nbuckets > METRIC_MAX_BUCKETS)
		return false;
	for (size_t i = 0; i < d->nbuckets; i++) {
		if (!isfinite(d->buckets[i]) || (i > 0 && d->buckets[i] <= d->buckets[i - 1]))
			return false;
	}
	return true;
}

/* Unit from the suffix (before "_total"), and the Prometheus name. */
static char *prom_name(struct metrics_registry *reg, const char *name, enum metric_type type,
                       enum metric_unit *unit)
{
	static const struct {
		const char *from, *to;
		enum metric_unit unit;
	} units[] = {
	        {"_ms", "_seconds", METRIC_UNIT_MS},
	        {"_mb", "_bytes", METRIC_UNIT_MB},
	        {"_pct", "_ratio", METRIC_UNIT_PCT},
	};
	const char *total = type == METRIC_COUNTER ? "_total" : "";
	int len = (int)(strlen(name) - strlen(total));
	const char *to = "";
	*unit = METRIC_UNIT_NONE;
	for (size_t i = 0; i < COUNT_OF_(units); i++) {
		if (ends_with(name, (size_t)len, units[i].from)) {
			*unit = units[i].unit;
			to = units[i].to;
			len -= (int)strlen(units[i].from);
			break;
		}
	}
	char tmp[sizeof PROM_PREFIX + NAME_MAX_LEN + 16];
	snprintf(tmp, sizeof tmp, PROM_PREFIX "%.*s%s%s", len, name, to, total);
	for (char *p = tmp; *p; p++)
		if (*p == '.')
			*p = '_';
	return reg_strdup(reg, tmp);
}

static bool same_shape(const struct metric *m, const struct metric_def *d, size_t nlabels)
{
	if (m->type != d->type || m->nlabels != nlabels)
		return false;
	for (size_t i = 0; i < nlabels; i++)
		if (strcmp(m->labels[i], d->labels[i]) != 0)
			return false;
	if (m->type != METRIC_HISTOGRAM)
		return true;
	return m->nbuckets == d->nbuckets &&
	       memcmp(m->bounds, d->buckets, d->nbuckets * sizeof(double)) == 0;
}

static struct metric_series *series_new(struct metric *m, const char *const *values, uint64_t hash);

struct metric *metrics_declare(struct metrics_registry *reg, const struct metric_def *def)
{
	size_t nlabels = 0;
	if (!reg || !def || !def_valid(def, &nlabels))
		return NULL;
	struct metric *old = metrics_find(reg, def->name);
	if (old)
		return same_shape(old, def, nlabels) ? old : NULL;

	struct metric *m = reg_alloc(reg, sizeof *m);
	m->reg = reg;
	m->name = reg_strdup(reg, def->name);
	m->prom = prom_name(reg, def->name, def->type, &m->unit);
	m->help = reg_strdup(reg, def->help);
	m->type = def->type;
	m->nlabels = nlabels;
	for (size_t i = 0; i < nlabels; i++)
		m->labels[i] = reg_strdup(reg, def->labels[i]);
	if (def->type == METRIC_HISTOGRAM) {
		m->nbuckets = def->nbuckets;
		m->bounds = reg_alloc(reg, def->nbuckets * sizeof(double));
		memcpy(m->bounds, def->buckets, def->nbuckets * sizeof(double));
	}
	m->max_series = METRIC_DEFAULT_MAX_SERIES;
	metric_set_max_series(m, def->max_series);

	if (reg->nmetrics == reg->metrics_cap) {
		reg->metrics_cap = reg->metrics_cap ? reg->metrics_cap * 2 : 32;
		reg->metrics =
		        reg_realloc(reg, reg->metrics, reg->metrics_cap * sizeof *reg->metrics);
	}
	reg->metrics[reg->nmetrics++] = m;
	/* The one series of an unlabelled metric exists from the start: it is
	 * exposed as 0 before the first update, and updates never allocate. */
	if (nlabels == 0)
		series_new(m, NULL, 0);
	return m;
}

struct metric *metrics_find(const struct metrics_registry *reg, const char *name)
{
	if (!reg || !name)
		return NULL;
	for (size_t i = 0; i < reg->nmetrics; i++)
		if (strcmp(reg->metrics[i]->name, name) == 0)
			return reg->metrics[i];
	return NULL;
}

void metric_set_max_series(struct metric *m, size_t max_series)
{
	if (!m)
		return;
	if (max_series == 0)
		max_series = METRIC_DEFAULT_MAX_SERIES;
	m->max_series = max_series < SERIES_HARD_MAX ? max_series : SERIES_HARD_MAX;
}

const char *metric_name(const struct metric *m)
{
	return m ? m->name : NULL;
}

enum metric_type metric_type(const struct metric *m)
{
	return m ? m->type : METRIC_COUNTER;
}

enum metric_unit metric_unit(const struct metric *m)
{
	return m ? m->unit : METRIC_UNIT_NONE;
}

size_t metric_prom_name(const struct metric *m, char *out, size_t size)
{
	if (!out || size == 0)
		return 0;
	out[0] = '\0';
	if (!m || strlen(m->prom) >= size)
		return 0;
	size_t n = strlen(m->prom);
	memcpy(out, m->prom, n + 1);
	return n;
}

size_t metric_nseries(const struct metric *m)
{
	return m ? m->nseries : 0;
}

/* Series lookup. */

static uint64_t labels_hash(const char *const *values, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
			h = (h ^ *p) * 0x100000001b3ull;
		h = (h ^ 0xff) * 0x100000001b3ull; /* separator: ("ab","c") != ("a","bc") */
	}
	return h;
}

/* True when values holds exactly m->nlabels non-NULL strings, then NULL. */
static bool labels_fit(const struct metric *m, const char *const *values)
{
	if (!values)
		return m->nlabels == 0;
	for (size_t i = 0; i < m->nlabels; i++)
		if (!values[i])
			return false;
	return values[m->nlabels] == NULL;
}

static void slots_insert(struct metric *m, uint64_t hash, uint32_t index)
{
	size_t i = (size_t)hash & (m->nslots - 1);
	while (m->slots[i])
		i = (i + 1) & (m->nslots - 1);
	m->slots[i] = index + 1;
}

/* Keeps the load at or under one half. */
static void slots_grow(struct metric *m)
{
	if (m->nslots && (m->nseries + 1) * 2 <= m->nslots)
		return;
	size_t n = m->nslots ? m->nslots * 2 : 16;
	free(m->slots);
	m->slots = reg_alloc(m->reg, n * sizeof *m->slots);
	m->nslots = n;
	for (size_t i = 0; i < m->nseries; i++)
		slots_insert(m, m->series[i]->hash, (uint32_t)i);
}

static struct metric_series *series_new(struct metric *m, const char *const *values, uint64_t hash)
{
	size_t nb = m->type == METRIC_HISTOGRAM ? m->nbuckets + 1 : 0;
	size_t size = sizeof(struct metric_series) + nb * sizeof(uint64_t);
	size_t lens[METRIC_MAX_LABELS];
	for (size_t i = 0; i < m->nlabels; i++) {
		lens[i] = strlen(values[i]) + 1;
		size += lens[i];
	}
	struct metric_series *s = reg_alloc(m->reg, size);
	s->reg = m->reg;
	s->m = m;
	s->hash = hash;
	char *p = (char *)(s->buckets + nb);
	for (size_t i = 0; i < m->nlabels; i++) {
		memcpy(p, values[i], lens[i]);
		s->values[i] = p;
		p += lens[i];
	}
	if (m->nseries == m->series_cap) {
		m->series_cap = m->series_cap ? m->series_cap * 2 : 4;
		m->series = reg_realloc(m->reg, m->series, m->series_cap * sizeof *m->series);
	}
	if (m->nlabels) {
		slots_grow(m);
		slots_insert(m, hash, (uint32_t)m->nseries);
	}
	m->series[m->nseries++] = s;
	m->reg->nseries++;
	return s;
}

static void drop(struct metrics_registry *reg)
{
	reg->dropped++;
}

struct metric_series *metric_series(struct metric *m, const char *const *values)
{
	if (!m)
		return NULL;
	if (!labels_fit(m, values)) {
		drop(m->reg);
		return NULL;
	}
	if (m->nlabels == 0)
		return m->series[0];
	uint64_t h = labels_hash(values, m->nlabels);
	if (m->nslots) {
		size_t i = (size_t)h & (m->nslots - 1);
		for (; m->slots[i]; i = (i + 1) & (m->nslots - 1)) {
			struct metric_series *s = m->series[m->slots[i] - 1];
			if (s->hash != h)
				continue;
			size_t k = 0;
			while (k < m->nlabels && strcmp(s->values[k], values[k]) == 0)
				k++;
			if (k == m->nlabels)
				return s;
		}
	}
	if (m->nseries >= m->max_series) {
		drop(m->reg);
		if (!m->overflowed) {
			m->overflowed = true;
			if (m->reg->overflow_cb)
				m->reg->overflow_cb(m->name, m->max_series, m->reg->overflow_arg);
		}
		return NULL;
	}
	return series_new(m, values, h);
}

/* Updates. */

enum op { OP_INC, OP_DEC, OP_SET, OP_OBSERVE };

/* Whether op with v applies to m's type: counters only go up, only gauges go
 * down or are set, only histograms observe, and no type takes NaN or Inf. */
static bool op_ok(const struct metric *m, enum op op, double v)
{
	if (!isfinite(v))
		return false;
	switch (op) {
	case OP_INC: return m->type == METRIC_GAUGE || (m->type == METRIC_COUNTER && v >= 0);
	case OP_DEC:
	case OP_SET: return m->type == METRIC_GAUGE;
	case OP_OBSERVE: return m->type == METRIC_HISTOGRAM;
	}
	return false;
}

static void apply(struct metric_series *s, enum op op, double v)
{
	const struct metric *m = s->m;
	switch (op) {
	case OP_INC: s->value += v; break;
	case OP_DEC: s->value -= v; break;
	case OP_SET: s->value = v; break;
	case OP_OBSERVE: {
		/* The first bucket whose upper bound is >= v ("le"); nbuckets is +Inf. */
		size_t lo = 0, hi = m->nbuckets;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (v <= m->bounds[mid])
				hi = mid;
			else
				lo = mid + 1;
		}
		s->buckets[lo]++;
		s->count++;
		s->value += v;
		break;
	}
	}
}

static void series_update(struct metric_series *s, enum op op, double v)
{
	if (!s || !s->reg->enabled)
		return;
	if (!op_ok(s->m, op, v)) {
		drop(s->reg);
		return;
	}
	apply(s, op, v);
}

void metric_series_inc(struct metric_series *s, double v)
{
	series_update(s, OP_INC, v);
}

void metric_series_dec(struct metric_series *s, double v)
{
	series_update(s, OP_DEC, v);
}

void metric_series_set(struct metric_series *s, double v)
{
	series_update(s, OP_SET, v);
}

void metric_series_observe(struct metric_series *s, double v)
{
	series_update(s, OP_OBSERVE, v);
}

double metric_series_value(const struct metric_series *s)
{
	return s ? s->value : 0;
}

uint64_t metric_series_obs_count(const struct metric_series *s)
{
	return s && s->m->type == METRIC_HISTOGRAM ? s->count : 0;
}

uint64_t metric_series_bucket(const struct metric_series *s, size_t i)
{
	if (!s || s->m->type != METRIC_HISTOGRAM || i > s->m->nbuckets)
		return 0;
	return s->buckets[i];
}

/* The one-shot calls check type and value before the lookup, so a refused
 * call creates no series. */
#define LABELS_UPDATE_(fn, op)                                         \
	void fn(struct metric *m, double v, const char *const *labels) \
	{                                                              \
		if (!m || !m->reg->enabled)                            \
			return;                                        \
		if (!op_ok(m, op, v)) {                                \
			drop(m->reg);                                  \
			return;                                        \
		}                                                      \
		struct metric_series *s = metric_series(m, labels);    \
		if (s)                                                 \
			apply(s, op, v);                               \
	}

LABELS_UPDATE_(metric_inc_labels, OP_INC)
LABELS_UPDATE_(metric_dec_labels, OP_DEC)
LABELS_UPDATE_(metric_set_labels, OP_SET)
LABELS_UPDATE_(metric_observe_labels, OP_OBSERVE)

/* Formatting. */

/* Shortest round-trip form; integers without a fraction or exponent. */
static void add_num(struct buf *b, double v)
{
	char tmp[40];
	if (v == 0) {
		buf_addc(b, '0');
		return;
	}
	if (v == floor(v) && fabs(v) < 1e15) {
		snprintf(tmp, sizeof tmp, "%.0f", v);
	} else {
		for (int prec = 15; prec <= 17; prec++) {
			snprintf(tmp, sizeof tmp, "%.*g", prec, v);
			if (strtod(tmp, NULL) == v)
				break;
		}
	}
	buf_adds(b, tmp);
}

static double to_base(const struct metric *m, double v)
{
	switch (m->unit) {
	case METRIC_UNIT_MS: return v / 1000;
	case METRIC_UNIT_MB: return v * 1048576;
	case METRIC_UNIT_PCT: return v / 100;
	case METRIC_UNIT_NONE: break;
	}
	return v;
}

/* Text-format escaping: backslash and newline always, '"' in label values;
 * invalid UTF-8 (which Prometheus rejects) becomes U+FFFD. */
static void prom_escape(struct buf *b, const char *s, bool quote)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	size_t i = 0;
	while (i < n) {
		size_t run = i;
		while (run < n && p[run] < 0x80 && p[run] != '\\' && p[run] != '\n' &&
		       !(quote && p[run] == '"'))
			run++;
		if (run > i) {
			buf_add(b, p + i, run - i);
			i = run;
			continue;
		}
		if (p[i] == '\\') {
			buf_add(b, "\\\\", 2);
			i++;
		} else if (p[i] == '\n') {
			buf_add(b, "\\n", 2);
			i++;
		} else if (p[i] == '"') {
			buf_add(b, "\\\"", 2);
			i++;
		} else {
			size_t l = buf_utf8_seq_len(p + i, n - i);
			if (l == 0) {
				buf_adds(b, "\xef\xbf\xbd");
				i++;
			} else {
				buf_add(b, p + i, l);
				i += l;
			}
		}
	}
}

/* {k="v",...} plus an optional le="bound"; nothing when there is no label. */
static void prom_labels(struct buf *b, const struct metric_series *s, const double *le)
{
	const struct metric *m = s->m;
	if (m->nlabels == 0 && !le)
		return;
	buf_addc(b, '{');
	for (size_t i = 0; i < m->nlabels; i++) {
		if (i)
			buf_addc(b, ',');
		buf_printf(b, "%s=\"", m->labels[i]);
		prom_escape(b, s->values[i], true);
		buf_addc(b, '"');
	}
	if (le) {
		buf_adds(b, m->nlabels ? ",le=\"" : "le=\"");
		if (isinf(*le))
			buf_adds(b, "+Inf");
		else
			add_num(b, to_base(m, *le));
		buf_addc(b, '"');
	}
	buf_addc(b, '}');
}

static void prom_histogram(struct buf *b, const struct metric_series *s)
{
	const struct metric *m = s->m;
	uint64_t cum = 0;
	for (size_t i = 0; i <= m->nbuckets; i++) {
		double le = i < m->nbuckets ? m->bounds[i] : INFINITY;
		cum += s->buckets[i];
		buf_printf(b, "%s_bucket", m->prom);
		prom_labels(b, s, &le);
		buf_printf(b, " %llu\n", (unsigned long long)cum);
	}
	buf_printf(b, "%s_sum", m->prom);
	prom_labels(b, s, NULL);
	buf_addc(b, ' ');
	add_num(b, to_base(m, s->value));
	buf_printf(b, "\n%s_count", m->prom);
	prom_labels(b, s, NULL);
	buf_printf(b, " %llu\n", (unsigned long long)s->count);
}

void metrics_format_prometheus(const struct metrics_registry *reg, struct buf *out)
{
	static const char *const types[] = {"counter", "gauge", "histogram"};
	if (!reg || !out)
		return;
	for (size_t i = 0; i < reg->nmetrics; i++) {
		const struct metric *m = reg->metrics[i];
		buf_printf(out, "# HELP %s ", m->prom);
		prom_escape(out, m->help, false);
		buf_printf(out, "\n# TYPE %s %s\n", m->prom, types[m->type]);
		for (size_t j = 0; j < m->nseries; j++) {
			const struct metric_series *s = m->series[j];
			if (m->type == METRIC_HISTOGRAM) {
				prom_histogram(out, s);
				continue;
			}
			buf_adds(out, m->prom);
			prom_labels(out, s, NULL);
			buf_addc(out, ' ');
			add_num(out, to_base(m, s->value));
			buf_addc(out, '\n');
		}
	}
}

/* "name" or "name|k=v,k=v", as a JSON string. */
static void json_series_key(struct buf *out, struct buf *tmp, const struct metric_series *s)
{
	const struct metric *m = s->m;
	buf_reset(tmp);
	buf_adds(tmp, m->name);
	for (size_t i = 0; i < m->nlabels; i++)
		buf_printf(tmp, "%c%s=%s", i ? ',' : '|', m->labels[i], s->values[i]);
	buf_add_json_str(out, tmp->data, tmp->len);
	buf_addc(out, ':');
}

static void json_histogram(struct buf *out, const struct metric_series *s)
{
	const struct metric *m = s->m;
	buf_printf(out, "{\"count\":%llu,\"sum\":", (unsigned long long)s->count);
	add_num(out, s->value);
	buf_adds(out, ",\"buckets\":{");
	uint64_t cum = 0;
	for (size_t i = 0; i < m->nbuckets; i++) {
		cum += s->buckets[i];
		buf_addc(out, '"');
		add_num(out, m->bounds[i]);
		buf_printf(out, "\":%llu,", (unsigned long long)cum);
	}
	buf_printf(out, "\"+Inf\":%llu}}", (unsigned long long)s->count);
}

void metrics_format_json(const struct metrics_registry *reg, struct buf *out, const char *ts)
{
	static const char *const sections[] = {"counters", "gauges", "histograms"};
	if (!out)
		return;
	buf_adds(out, "{\"timestamp\":");
	if (ts)
		buf_add_json_str(out, ts, strlen(ts));
	else
		buf_adds(out, "null");
	struct buf key = BUF_INIT;
	for (enum metric_type t = METRIC_COUNTER; t <= METRIC_HISTOGRAM; t++) {
		buf_printf(out, ",\"%s\":{", sections[t]);
		bool first = true;
		for (size_t i = 0; reg && i < reg->nmetrics; i++) {
			const struct metric *m = reg->metrics[i];
			if (m->type != t)
				continue;
			for (size_t j = 0; j < m->nseries; j++) {
				if (!first)
					buf_addc(out, ',');
				first = false;
				json_series_key(out, &key, m->series[j]);
				if (t == METRIC_HISTOGRAM)
					json_histogram(out, m->series[j]);
				else
					add_num(out, m->series[j]->value);
			}
		}
		buf_addc(out, '}');
	}
	buf_addc(out, '}');
	buf_free(&key);
}

/* The catalog and the default registry. */

bool metrics_declare_catalog(struct metrics_registry *reg)
{
	if (!reg)
		return false;
	bool ok = true;
	for (size_t i = 0; i < METRIC_ID_COUNT; i++) {
		reg->catalog[i] = metrics_declare(reg, &catalog[i]);
		ok = ok && reg->catalog[i];
	}
	reg->has_catalog = true;
	return ok;
}

struct metric *metrics_get(const struct metrics_registry *reg, enum metric_id id)
{
	if (!reg || !reg->has_catalog || (size_t)id >= METRIC_ID_COUNT)
		return NULL;
	return reg->catalog[id];
}

const char *metrics_catalog_name(enum metric_id id)
{
	return (size_t)id < METRIC_ID_COUNT ? catalog[id].name : NULL;
}

static struct metrics_registry *default_registry;

struct metrics_registry *metrics_default(void)
{
	if (!default_registry) {
		default_registry = metrics_registry_new();
		bool ok = metrics_declare_catalog(default_registry);
		(void)ok; /* test_metrics proves the catalog declares cleanly */
	}
	return default_registry;
}

struct metric *metrics_default_get(enum metric_id id)
{
	return metrics_get(metrics_default(), id);
}

void metrics_default_free(void)
{
	metrics_registry_free(default_registry);
	default_registry = NULL;
}
