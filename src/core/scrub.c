/* PII scrubbing (privacy.scrub). Three things are masked in text: the
 * values a job gave under the configured field names (found once per task,
 * matched verbatim as whole words), and, by two hand-written matchers (no
 * regex), e-mail addresses and phone numbers. An e-mail address is found
 * from its '@' (local part backwards, domain forwards), a phone number
 * from a '+', a '(' or a digit at a word start,
 * read as digit groups and then judged by its shape. The phone rules are
 * deliberately narrow where logs are full of look-alikes: timestamps,
 * dates, durations, versions, IP addresses, UUIDs, hashes, ranges, byte
 * counts and epoch times are not numbers a person dials, and a run of bare
 * digits is only taken when it carries a trunk prefix ("0612345678"). Every
 * scan is bounded (a local part, a domain, a phone number have maximum
 * lengths), so a line is scrubbed in time linear in its length. Masks start
 * and end on ASCII bytes or whole UTF-8 sequences, so valid UTF-8 stays
 * valid. Field names are compared after folding case and dropping '-', '_',
 * '.' and spaces, like redact.c's secret names, but whole, not as
 * fragments: "filename" is not "name". */
#include "core/scrub.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

#define SCRUB_DEPTH_MAX_VALUES 64 /* params walked for values */

struct scrub {
	unsigned patterns;
	char **fields; /* normalized */
	size_t nfields;
};

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_alnum(unsigned char c)
{
	return is_digit(c) || is_alpha(c);
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* --- Lists ---------------------------------------------------------------- */

/* Calls fn for each trimmed, non-empty entry of a comma list; stops and
 * returns false when fn does. */
static bool list_each(const char *list, bool (*fn)(const char *s, size_t n, void *arg), void *arg)
{
	const char *p = list ? list : "";
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		const char *a = p, *b = p + n;
		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		if (b > a && !fn(a, (size_t)(b - a), arg))
			return false;
		p = e ? e + 1 : p + n;
	}
	return true;
}

struct list_ctx {
	unsigned bits;
	char **bad;
	struct scrub *sc;
};

static bool pattern_bit(const char *s, size_t n, unsigned *bit)
{
	if (n == 5 && strncmp(s, "email", 5) == 0)
		*bit = SCRUB_EMAIL;
	else if (n == 5 && strncmp(s, "phone", 5) == 0)
		*bit = SCRUB_PHONE;
	else
		return false;
	return true;
}

static bool pattern_cb(const char *s, size_t n, void *arg)
{
	struct list_ctx *c = arg;
	unsigned bit;
	if (!pattern_bit(s, n, &bit)) {
		if (c->bad)
			*c->bad = xstrndup(s, n);
		return false;
	}
	c->bits |= bit;
	return true;
}

bool scrub_patterns_parse(const char *list, unsigned *out, char **bad)
{
	struct list_ctx c = {.bad = bad};
	if (bad)
		*bad = NULL;
	if (!list_each(list, pattern_cb, &c))
		return false;
	*out = c.bits;
	return true;
}

/* The folded form of a field name into out (SCRUB_FIELD_MAX + 1 bytes);
 * false when it is empty or longer than SCRUB_FIELD_MAX. */
static bool field_fold(const char *s, size_t n, char *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '-' || c == '_' || c == '.' || c == ' ')
			continue;
		if (k == SCRUB_FIELD_MAX)
			return false;
		out[k++] = lower(c);
	}
	out[k] = '\0';
	return k > 0;
}

static bool field_check_cb(const char *s, size_t n, void *arg)
{
	struct list_ctx *c = arg;
	char tmp[SCRUB_FIELD_MAX + 1];
	if (n > SCRUB_FIELD_MAX || !field_fold(s, n, tmp)) {
		if (c->bad)
			*c->bad = xstrndup(s, n);
		return false;
	}
	return true;
}

bool scrub_fields_check(const char *list, char **bad)
{
	struct list_ctx c = {.bad = bad};
	if (bad)
		*bad = NULL;
	return list_each(list, field_check_cb, &c);
}

static bool field_add_cb(const char *s, size_t n, void *arg)
{
	struct list_ctx *c = arg;
	char tmp[SCRUB_FIELD_MAX + 1];
	if (n <= SCRUB_FIELD_MAX && field_fold(s, n, tmp)) {
		c->sc->fields =
		        xrealloc(c->sc->fields, (c->sc->nfields + 1) * sizeof *c->sc->fields);
		c->sc->fields[c->sc->nfields++] = xstrdup(tmp);
	}
	return true;
}

static bool pattern_add_cb(const char *s, size_t n, void *arg)
{
	struct list_ctx *c = arg;
	unsigned bit;
	if (pattern_bit(s, n, &bit))
		c->sc->patterns |= bit;
	return true;
}

struct scrub *scrub_new(const char *fields, const char *patterns)
{
	struct scrub *sc = xcalloc(1, sizeof *sc);
	struct list_ctx c = {.sc = sc};
	(void)list_each(fields, field_add_cb, &c);
	(void)list_each(patterns, pattern_add_cb, &c);
	return sc;
}

void scrub_free(struct scrub *sc)
{
	if (sc == NULL)
		return;
	for (size_t i = 0; i < sc->nfields; i++)
		free(sc->fields[i]);
	free(sc->fields);
	free(sc);
}

bool scrub_field_listed(const struct scrub *sc, const char *name, size_t len)
{
	if (sc == NULL || sc->nfields == 0 || name == NULL)
		return false;
	char tmp[SCRUB_FIELD_MAX + 1];
	if (!field_fold(name, len, tmp))
		return false;
	for (size_t i = 0; i < sc->nfields; i++)
		if (strcmp(sc->fields[i], tmp) == 0)
			return true;
	return false;
}

/* --- UTF-8 ---------------------------------------------------------------- */

static uint32_t utf8_decode(const unsigned char *s, size_t n)
{
	if (n == 2)
		return ((uint32_t)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
	if (n == 3)
		return ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) |
		       (s[2] & 0x3f);
	return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) |
	       ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
}

/* Non-ASCII code points that end a word: punctuation, spaces, symbols and
 * emoji, so "bob@example.com。" or "«bob@example.com»" keep their marks. */
static bool cp_is_word(uint32_t cp)
{
	static const struct {
		uint32_t lo, hi;
	} stop[] = {
	        {0x0080, 0x00bf}, {0x00d7, 0x00d7},   {0x00f7, 0x00f7}, {0x2000, 0x2bff},
	        {0x3000, 0x303f}, {0xfe30, 0xfe4f},   {0xff00, 0xff20}, {0xff3b, 0xff40},
	        {0xff5b, 0xff65}, {0x1f000, 0x1faff},
	};
	for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++)
		if (cp >= stop[i].lo && cp <= stop[i].hi)
			return false;
	return true;
}

/* Length of the word character (a valid multi-byte sequence of a word code
 * point) starting at s[i], or 0. */
static size_t utf8_word_fwd(const char *s, size_t len, size_t i)
{
	const unsigned char *u = (const unsigned char *)s + i;
	size_t n = buf_utf8_seq_len(u, len - i);
	return n >= 2 && cp_is_word(utf8_decode(u, n)) ? n : 0;
}

/* Length of the word character ending just before s[end] (not reaching
 * below lo), or 0. */
static size_t utf8_word_back(const char *s, size_t lo, size_t end)
{
	size_t k = end;
	while (k > lo && end - k < 4 && ((unsigned char)s[k - 1] & 0xc0) == 0x80)
		k--;
	if (k == lo || end - k >= 4)
		return 0;
	k--;
	const unsigned char *u = (const unsigned char *)s + k;
	size_t n = buf_utf8_seq_len(u, end - k);
	return n == end - k && n >= 2 && cp_is_word(utf8_decode(u, n)) ? n : 0;
}

/* --- E-mail addresses ------------------------------------------------------- */

#define EMAIL_LOCAL_MAX 256 /* scanned back from '@'; RFC 5321 allows 64 */
#define EMAIL_DOMAIN_MAX 253
#define EMAIL_LABELS_MAX 64

static bool is_local_char(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

/* The top-level label: two or more ASCII letters, an A-label (xn--...), or
 * non-ASCII letters only (an IDN top-level domain). */
static bool tld_ok(const char *s, size_t n)
{
	if (n >= 5 && lower(s[0]) == 'x' && lower(s[1]) == 'n' && s[2] == '-' && s[3] == '-')
		return true;
	bool ascii = false, other = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80)
			other = true;
		else if (is_alpha(c))
			ascii = true;
		else
			return false;
	}
	return ascii ? !other && n >= 2 : other;
}

/* s[at] == '@': the address around it, [*from, *end); the local part does
 * not reach below lo (what is already written out). */
static bool email_at(const char *s, size_t len, size_t at, size_t lo, size_t *from, size_t *end)
{
	size_t k = at;
	while (k > lo && at - k < EMAIL_LOCAL_MAX) {
		unsigned char c = (unsigned char)s[k - 1];
		if (c < 0x80) {
			if (!is_local_char(c))
				break;
			k--;
			continue;
		}
		size_t n = utf8_word_back(s, lo, k);
		if (n == 0)
			break;
		k -= n;
	}
	while (k < at && s[k] == '.')
		k++;
	if (k == at)
		return false;

	/* Domain labels: [start, end) of each, the best end is the last label
	 * that makes a valid top-level domain with at least one label before. */
	size_t p = at + 1, best = 0;
	int nlabels = 0;
	while (p < len && p - at <= EMAIL_DOMAIN_MAX && nlabels < EMAIL_LABELS_MAX) {
		size_t ls = p;
		while (p < len && p - at <= EMAIL_DOMAIN_MAX) {
			unsigned char c = (unsigned char)s[p];
			size_t n = c < 0x80 ? (is_alnum(c) || c == '-') : utf8_word_fwd(s, len, p);
			if (n == 0)
				break;
			p += n;
		}
		if (p == ls || s[ls] == '-' || s[p - 1] == '-' || p - ls > 63)
			break;
		nlabels++;
		if (nlabels >= 2 && tld_ok(s + ls, p - ls))
			best = p;
		if (p + 1 < len && s[p] == '.' && s[p + 1] != '.' && s[p + 1] != '-')
			p++;
		else
			break;
	}
	if (best == 0)
		return false;
	*from = k;
	*end = best;
	return true;
}

/* --- Phone numbers ----------------------------------------------------------- */

#define PHONE_DIGITS_MAX 15 /* E.164 */
#define PHONE_GROUPS_MAX 12

struct phone {
	bool plus;
	bool lead00; /* the first group starts with "00" */
	int ngroups;
	int paren; /* index of the "(...)" group, -1 when none */
	unsigned char glen[PHONE_GROUPS_MAX]; /* digits per group */
	char sep[PHONE_GROUPS_MAX]; /* before group k: 0, ' ', '-', '.' */
	char first[PHONE_GROUPS_MAX]; /* its first digit */
	size_t gend[PHONE_GROUPS_MAX]; /* just past group k */
};

/* The byte before a number: a word start, not the inside of a token. */
static bool phone_start_ok(const char *s, size_t i)
{
	if (i == 0)
		return true;
	unsigned char c = (unsigned char)s[i - 1];
	if (c >= 0x80)
		return true; /* after a non-ASCII word or mark: "tél.：+33 ..." */
	switch (c) {
	case ' ':
	case '\t':
	case '\n':
	case '\r':
	case '"':
	case '\'':
	case '(':
	case '[':
	case '{':
	case '<':
	case '>':
	case ',':
	case ';':
	case '=':
	case '|':
	case '*': return true;
	case ':': return i < 2 || !is_digit((unsigned char)s[i - 2]); /* not a time */
	default: return false;
	}
}

static size_t digits_at(const char *s, size_t len, size_t p, size_t max)
{
	size_t n = 0;
	while (p + n < len && n <= max && is_digit((unsigned char)s[p + n]))
		n++;
	return n;
}

/* Reads digit groups from s[i] as far as the shape allows. */
static bool phone_read(const char *s, size_t len, size_t i, struct phone *ph)
{
	memset(ph, 0, sizeof *ph);
	ph->paren = -1;
	size_t p = i;
	if (s[p] == '+') {
		ph->plus = true;
		p++;
		if (p >= len || !is_digit((unsigned char)s[p]) || s[p] == '0')
			return false;
	}
	int digits = 0;
	char sep = 0;
	while (ph->ngroups < PHONE_GROUPS_MAX && p < len) {
		int k = ph->ngroups;
		size_t q = p, n;
		bool paren = false;
		if (s[q] == '(') {
			if (ph->paren >= 0 || k != (ph->plus ? 1 : 0))
				break;
			n = digits_at(s, len, q + 1, 5);
			if (n == 0 || n > 5 || q + 1 + n >= len || s[q + 1 + n] != ')')
				break;
			paren = true;
			q += 1;
		} else {
			n = digits_at(s, len, q, PHONE_DIGITS_MAX);
			if (n == 0)
				break;
		}
		if (digits + (int)n > PHONE_DIGITS_MAX)
			break;
		digits += (int)n;
		ph->glen[k] = (unsigned char)n;
		ph->first[k] = s[q];
		if (k == 0)
			ph->lead00 = n >= 2 && s[q] == '0' && s[q + 1] == '0';
		ph->sep[k] = sep;
		if (paren)
			ph->paren = k;
		p = q + n + (paren ? 1 : 0);
		ph->gend[k] = p;
		ph->ngroups++;
		/* what may come next: a separator, or right after "+CC" or
		 * "(...)" a group with none */
		sep = 0;
		if (p >= len)
			break;
		char c = s[p];
		if ((c == ' ' || c == '-' || c == '.') && p + 1 < len &&
		    (is_digit((unsigned char)s[p + 1]) || s[p + 1] == '(')) {
			sep = c;
			p++;
		} else if (!((paren && is_digit((unsigned char)c)) ||
		             (ph->plus && k == 0 && c == '('))) {
			break;
		}
	}
	return ph->ngroups > 0;
}

/* The byte after a number: not more of a token (a hash, a unit, a time, a
 * port, an address, a decimal). */
static bool phone_end_ok(const char *s, size_t len, size_t e)
{
	if (e >= len)
		return true;
	unsigned char c = (unsigned char)s[e];
	if (is_alnum(c))
		return false;
	switch (c) {
	case '_':
	case '@':
	case ':':
	case '%':
	case '/':
	case '\\':
	case '+':
	case '#': return false;
	case '.':
	case ',':
	case '-': return !(e + 1 < len && is_digit((unsigned char)s[e + 1]));
	default: return true;
	}
}

static bool date_shape(int a, int b, int c)
{
	return (a == 4 && b <= 2 && c <= 2) || (a <= 2 && b <= 2 && c == 4);
}

/* Is the number made of the first g groups of ph a phone number? */
static bool phone_shape_ok(const struct phone *ph, int g)
{
	int digits = 0;
	for (int k = 0; k < g; k++)
		digits += ph->glen[k];
	if (ph->paren == g - 1 || (g > 1 && ph->glen[g - 1] < 2))
		return false; /* ends in "(...)" or a lone digit */

	if (ph->plus) /* "+CC ...": the strongest sign */
		return g == 1 ? digits >= 10 : digits >= 8;

	if (ph->paren == 0) { /* "(555) 123-4567", "(030) 1234567" */
		if (ph->glen[0] < 2 || digits - ph->glen[0] < 5 || ph->glen[1] < 3)
			return false;
		for (int k = 1; k < g; k++)
			if (ph->glen[k] < 2)
				return false;
		return digits >= 7 && digits <= 13;
	}

	if (g == 1) /* bare digits only with a trunk prefix: "0612345678" */
		return (digits == 10 || digits == 11) && ph->first[0] == '0' && !ph->lead00;

	bool other = false; /* a separator other than a space */
	char osep = 0;
	for (int k = 1; k < g; k++) {
		char c = ph->sep[k];
		if (c && c != ' ') {
			if (other && c != osep)
				return false; /* "555-123.4567" */
			other = true;
			osep = c;
		}
	}
	/* dates: 2026-11-26, 26.11.2026, also inside a longer run */
	for (int k = 0; k + 2 < g; k++)
		if (ph->sep[k + 1] != ' ' && ph->sep[k + 1] == ph->sep[k + 2] &&
		    date_shape(ph->glen[k], ph->glen[k + 1], ph->glen[k + 2]))
			return false;
	/* thousands: 12.345.678, 12 345 678 */
	bool thousands = ph->glen[0] <= 3;
	for (int k = 1; k < g && thousands; k++)
		thousands = ph->glen[k] == 3 && ph->sep[k] == ph->sep[1];
	if (thousands)
		return false;
	bool trunk = ph->first[0] == '0';

	if (!other) { /* spaces only */
		if (trunk && ph->glen[0] >= 2 && ph->glen[0] <= 5) { /* 020 7946 0958 */
			for (int k = 1; k < g; k++)
				if (ph->glen[k] < 2)
					return false;
			return digits >= 9 && digits <= 13;
		}
		/* NANP: 555 123 4567 */
		return g == 3 && ph->glen[0] == 3 && ph->glen[1] == 3 && ph->glen[2] == 4 &&
		       ph->first[0] >= '2';
	}

	if (osep == '.' && g == 4) { /* an IPv4 address */
		bool ip = true;
		for (int k = 0; k < 4; k++)
			ip = ip && ph->glen[k] <= 3;
		if (ip)
			return false;
	}
	if (g == 2) /* 030-1234567; not a range like 1000-2000 */
		return trunk && ph->glen[0] >= 2 && ph->glen[0] <= 5 && ph->glen[1] >= 5 &&
		       digits >= 9 && digits <= 13;
	/* 555-123-4567, 1-800-555-0199, 06.12.34.56.78 */
	if (ph->glen[0] > 5 || (ph->glen[0] == 1 && g < 4))
		return false;
	for (int k = 1; k < g - 1; k++)
		if (ph->glen[k] < 2 || ph->glen[k] > 4)
			return false;
	if (ph->glen[g - 1] < 2 || ph->glen[g - 1] > (osep == '.' ? 4 : 8))
		return false;
	return digits >= 7 && digits <= 13;
}

/* A phone number starting at s[i]: its end. The longest reading wins;
 * trailing groups are dropped only where a space ends the number. */
static bool phone_at(const char *s, size_t len, size_t i, size_t *end)
{
	struct phone ph;
	if (!phone_start_ok(s, i) || !phone_read(s, len, i, &ph))
		return false;
	for (int g = ph.ngroups; g >= 1; g--) {
		if (phone_end_ok(s, len, ph.gend[g - 1]) && phone_shape_ok(&ph, g)) {
			*end = ph.gend[g - 1];
			return true;
		}
	}
	return false;
}

/* --- Values of the job's own fields ------------------------------------------- */

#define VALUES_MAX 64
#define VALUE_MIN 3 /* shorter values ("en", "42") would mask ordinary words */
#define VALUE_MAX 4096

struct scrub_values {
	size_t n;
	char *v[VALUES_MAX];
	size_t len[VALUES_MAX];
	unsigned char first[32]; /* bit set of the values' first bytes */
};

static void values_add(struct scrub_values *vs, const char *s, size_t n)
{
	if (vs->n == VALUES_MAX || n < VALUE_MIN || n > VALUE_MAX)
		return;
	for (size_t i = 0; i < vs->n; i++)
		if (vs->len[i] == n && memcmp(vs->v[i], s, n) == 0)
			return;
	/* longest first, so the longest value at a position wins */
	size_t k = vs->n;
	while (k > 0 && vs->len[k - 1] < n) {
		vs->v[k] = vs->v[k - 1];
		vs->len[k] = vs->len[k - 1];
		k--;
	}
	vs->v[k] = xstrndup(s, n);
	vs->len[k] = n;
	vs->n++;
	unsigned char c = (unsigned char)s[0];
	vs->first[c >> 3] |= (unsigned char)(1u << (c & 7));
}

/* Every scalar inside j, as text. */
static void values_take_all(struct scrub_values *vs, const json_t *j, int depth)
{
	if (depth > SCRUB_DEPTH_MAX_VALUES)
		return;
	char num[64];
	const char *k;
	json_t *v;
	size_t i;
	switch (json_typeof(j)) {
	case JSON_STRING: values_add(vs, json_string_value(j), json_string_length(j)); break;
	case JSON_INTEGER:
		snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
		values_add(vs, num, strlen(num));
		break;
	case JSON_OBJECT:
		json_object_foreach((json_t *)j, k, v) values_take_all(vs, v, depth + 1);
		break;
	case JSON_ARRAY:
		json_array_foreach((json_t *)j, i, v) values_take_all(vs, v, depth + 1);
		break;
	default: break;
	}
}

static void values_find(const struct scrub *sc, struct scrub_values *vs, const json_t *j, int depth)
{
	if (depth > SCRUB_DEPTH_MAX_VALUES)
		return;
	const char *k;
	json_t *v;
	size_t i;
	if (json_is_object(j)) {
		json_object_foreach((json_t *)j, k, v)
		{
			if (scrub_field_listed(sc, k, strlen(k)))
				values_take_all(vs, v, depth + 1);
			else
				values_find(sc, vs, v, depth + 1);
		}
	} else if (json_is_array(j)) {
		json_array_foreach((json_t *)j, i, v) values_find(sc, vs, v, depth + 1);
	}
}

struct scrub_values *scrub_values_new(const struct scrub *sc, const json_t *params)
{
	if (sc == NULL || sc->nfields == 0 || params == NULL)
		return NULL;
	struct scrub_values *vs = xcalloc(1, sizeof *vs);
	values_find(sc, vs, params, 0);
	if (vs->n == 0) {
		free(vs);
		return NULL;
	}
	return vs;
}

void scrub_values_free(struct scrub_values *vs)
{
	if (vs == NULL)
		return;
	for (size_t i = 0; i < vs->n; i++)
		free(vs->v[i]);
	free(vs);
}

/* A value at s[i], standing as a whole word where it begins or ends with
 * a letter or digit ("Ann" is not masked inside "Annual"): its length. */
static size_t value_at(const struct scrub_values *vs, const char *s, size_t len, size_t i)
{
	unsigned char c = (unsigned char)s[i];
	if (!(vs->first[c >> 3] & (1u << (c & 7))))
		return 0;
	for (size_t k = 0; k < vs->n; k++) {
		size_t n = vs->len[k];
		if (n > len - i || memcmp(s + i, vs->v[k], n) != 0)
			continue;
		if (is_alnum(c) && i > 0 && is_alnum((unsigned char)s[i - 1]))
			continue;
		if (is_alnum((unsigned char)s[i + n - 1]) && i + n < len &&
		    is_alnum((unsigned char)s[i + n]))
			continue;
		return n;
	}
	return 0;
}

/* --- Text ------------------------------------------------------------------- */

bool scrub_text_values(const struct scrub *sc, const struct scrub_values *vs, struct buf *out,
                       const char *s, size_t len)
{
	unsigned pat = sc ? sc->patterns : 0;
	bool email = (pat & SCRUB_EMAIL) && len > 0 && memchr(s, '@', len) != NULL;
	bool phone = (pat & SCRUB_PHONE) != 0;
	bool values = vs != NULL && vs->n > 0;
	if (!email && !phone && !values) {
		buf_add(out, s, len);
		return false;
	}
	bool masked = false;
	size_t i = 0, copied = 0;
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		size_t from = i, end, n;
		const char *mask = NULL;
		if (values && (n = value_at(vs, s, len, i)) > 0) {
			end = i + n;
			mask = SCRUB_MASK_FIELD;
		} else if (c == '@') {
			if (email && email_at(s, len, i, copied, &from, &end))
				mask = SCRUB_MASK_EMAIL;
		} else if (phone && (is_digit(c) || c == '+' || c == '(')) {
			if (phone_at(s, len, i, &end))
				mask = SCRUB_MASK_PHONE;
		}
		if (mask) {
			buf_add(out, s + copied, from - copied);
			buf_adds(out, mask);
			copied = i = end;
			masked = true;
			continue;
		}
		i++;
	}
	buf_add(out, s + copied, len - copied);
	return masked;
}

bool scrub_text(const struct scrub *sc, struct buf *out, const char *s, size_t len)
{
	return scrub_text_values(sc, NULL, out, s, len);
}

char *scrub_dup_values(const struct scrub *sc, const struct scrub_values *vs, const char *s)
{
	if ((sc == NULL && vs == NULL) || s == NULL)
		return NULL;
	struct buf b = BUF_INIT;
	if (!scrub_text_values(sc, vs, &b, s, strlen(s))) {
		buf_free(&b);
		return NULL;
	}
	return buf_steal(&b);
}

char *scrub_dup(const struct scrub *sc, const char *s)
{
	return scrub_dup_values(sc, NULL, s);
}

/* --- JSON ------------------------------------------------------------------- */

#define SCRUB_DEPTH_MAX 64

struct walk {
	const struct scrub *sc;
	const struct scrub_values *vs;
	struct buf tmp;
};

static bool json_walk(struct walk *w, json_t *j, int depth);

/* Masks or walks the value v that sits under name (NULL in an array);
 * *replace is set to a new value the caller stores in its place. */
static bool json_child(struct walk *w, const char *name, json_t *v, int depth, json_t **replace)
{
	*replace = NULL;
	bool deep = depth + 1 > SCRUB_DEPTH_MAX && (json_is_object(v) || json_is_array(v));
	if ((name && scrub_field_listed(w->sc, name, strlen(name)) && !json_is_null(v)) || deep) {
		if (json_is_string(v) && strcmp(json_string_value(v), SCRUB_MASK_FIELD) == 0)
			return false;
		*replace = json_string(SCRUB_MASK_FIELD);
		return true;
	}
	return json_walk(w, v, depth + 1);
}

static bool walk_text(struct walk *w, const char *s, size_t n)
{
	buf_reset(&w->tmp);
	return scrub_text_values(w->sc, w->vs, &w->tmp, s, n);
}

static bool json_walk(struct walk *w, json_t *j, int depth)
{
	bool masked = false;
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *v, *r;
		void *it;
		bool rename = false;
		json_object_foreach_safe(j, it, k, v)
		{
			masked |= json_child(w, k, v, depth, &r);
			if (r)
				json_object_set_new(j, k, r);
			rename = rename || walk_text(w, k, strlen(k));
		}
		if (rename) { /* keys that are addresses: rebuild in order */
			json_t *copy = json_object();
			json_object_foreach(j, k, v)
			{
				walk_text(w, k, strlen(k));
				json_object_set(copy, w->tmp.data ? w->tmp.data : "", v);
			}
			json_object_clear(j);
			json_object_update(j, copy);
			json_decref(copy);
			masked = true;
		}
		break;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *v, *r;
		json_array_foreach(j, i, v)
		{
			masked |= json_child(w, NULL, v, depth, &r);
			if (r)
				json_array_set_new(j, i, r);
		}
		break;
	}
	case JSON_STRING:
		if (walk_text(w, json_string_value(j), json_string_length(j))) {
			json_string_setn(j, w->tmp.data, w->tmp.len);
			masked = true;
		}
		break;
	default: break;
	}
	return masked;
}

bool scrub_json_values(const struct scrub *sc, const struct scrub_values *vs, json_t *j)
{
	if (j == NULL || ((sc == NULL || (sc->patterns == 0 && sc->nfields == 0)) && vs == NULL))
		return false;
	struct walk w = {.sc = sc, .vs = vs, .tmp = BUF_INIT};
	bool masked = json_walk(&w, j, 0);
	buf_free(&w.tmp);
	return masked;
}

bool scrub_json(const struct scrub *sc, json_t *j)
{
	return scrub_json_values(sc, NULL, j);
}
