/* Secret redaction for every log sink. Two rules: a field whose NAME says it
 * is secret is masked whole; inside any other value, known secret shapes are
 * masked in place (userinfo passwords in URLs, password= in keyword DSNs,
 * presigned query parameters, bearer tokens, stageline API keys). The rules
 * err on the side of masking: a false positive costs a log detail, a false
 * negative leaks a credential. */
#include "core/redact.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>

#include "core/xmalloc.h"

/* Name fragments that mark a field as secret, matched case-insensitively
 * anywhere in the name with '-' and '_' ignored ("X-Api-Key", "db_password"). */
static const char *const secret_names[] = {
        "password",   "passwd",    "secret", "token",      "authorization", "apikey", "accesskey",
        "credential", "signature", "cookie", "privatekey", "dsn",           NULL,
};

bool redact_key_is_secret(const char *key, size_t len)
{
	char small[128];
	char *norm = len < sizeof small ? small : xmalloc(len + 1);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		char c = key[i];
		if (c == '-' || c == '_' || c == '.' || c == ' ')
			continue;
		norm[n++] = (char)tolower((unsigned char)c);
	}
	norm[n] = '\0';
	bool secret = false;
	for (const char *const *p = secret_names; *p && !secret; p++)
		secret = strstr(norm, *p) != NULL;
	if (norm != small)
		free(norm);
	return secret;
}

/* Query or keyword parameters whose value is a secret. */
static const char *const secret_params[] = {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "sig",
        "signature",
        "token",
        "access_token",
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "sslpassword",
        NULL,
};

/* A parameter is secret when it is one of the known names or its name says
 * so by the same fragments as a field name (client_secret, refresh_token). */
static bool is_secret_param(const char *name, size_t len)
{
	for (const char *const *p = secret_params; *p; p++)
		if (strlen(*p) == len && strncasecmp(name, *p, len) == 0)
			return true;
	return redact_key_is_secret(name, len);
}

static bool is_param_char(char c)
{
	return isalnum((unsigned char)c) || c == '-' || c == '_';
}

static bool is_scheme_char(char c)
{
	return isalnum((unsigned char)c) || c == '+' || c == '-' || c == '.';
}

/* Characters that end a token inside free text (a URL, a DSN value). */
static bool is_token_end(char c)
{
	return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' ||
	       c == '\'' || c == '<' || c == '>' || c == '`';
}

/* At s[i] == ':' after "scheme://user": the password runs to the LAST '@'
 * before the authority ends (a raw '@' inside a password is common even
 * though RFC 3986 wants it encoded). Returns that index, or 0 when this
 * isn't userinfo. */
static size_t userinfo_password_end(const char *s, size_t len, size_t i)
{
	size_t at = 0;
	for (size_t j = i + 1; j < len && !is_token_end(s[j]); j++) {
		if (s[j] == '@')
			at = j;
		else if (s[j] == '/' || s[j] == '?' || s[j] == '#')
			break;
	}
	return at;
}

/* True when s[0..i) ends with "scheme://user" (user without '/', '@'). */
static bool after_scheme_user(const char *s, size_t i)
{
	size_t j = i;
	while (j > 0 && !is_token_end(s[j - 1]) && s[j - 1] != '/' && s[j - 1] != '@')
		j--;
	if (j < 3 || s[j - 1] != '/' || s[j - 2] != '/' || s[j - 3] != ':')
		return false;
	size_t k = j - 3;
	return k > 0 && is_scheme_char(s[k - 1]);
}

static bool starts_with_ci(const char *s, size_t len, size_t i, const char *word)
{
	size_t wl = strlen(word);
	return i + wl <= len && strncasecmp(s + i, word, wl) == 0;
}

/* A stageline API key: sl_ + 8 base62 + _ + 38 base62 (secret + checksum). */
static size_t api_key_len(const char *s, size_t len, size_t i)
{
	if (!(i + 3 <= len && s[i] == 's' && s[i + 1] == 'l' && s[i + 2] == '_'))
		return 0;
	if (i > 0 && is_param_char(s[i - 1]))
		return 0;
	size_t j = i + 3, n = 0;
	while (j < len && isalnum((unsigned char)s[j])) {
		j++;
		n++;
	}
	if (n < 4 || j >= len || s[j] != '_')
		return 0;
	j++;
	n = 0;
	while (j < len && isalnum((unsigned char)s[j])) {
		j++;
		n++;
	}
	return n >= 8 ? j - i : 0;
}

/* name=value at s[i] in a query string or a keyword DSN, where s[i] is a
 * separator or the start of the text. */
static bool match_param(const char *s, size_t len, size_t i, size_t *from, size_t *end)
{
	char c = s[i];
	bool sep = c == '?' || c == '&' || c == ' ' || c == ';' || c == '\t' || c == '\n' ||
	           c == '\r' || c == '#' || c == '\'' || c == '"' || c == ',' || c == '(';
	if (!sep && i != 0)
		return false;
	size_t ns = sep ? i + 1 : i;
	size_t ne = ns;
	while (ne < len && is_param_char(s[ne]))
		ne++;
	size_t eq = ne;
	while (eq < len && s[eq] == ' ')
		eq++;
	if (ne == ns || eq >= len || s[eq] != '=' || !is_secret_param(s + ns, ne - ns))
		return false;
	size_t vs = eq + 1;
	while (vs < len && s[vs] == ' ')
		vs++;
	size_t ve = vs;
	if (vs < len && s[vs] == '\'') {
		/* libpq quoted value: password='a b\'c' */
		ve = vs + 1;
		while (ve < len && s[ve] != '\'') {
			if (s[ve] == '\\' && ve + 1 < len)
				ve++;
			ve++;
		}
		if (ve < len)
			ve++;
	} else {
		while (ve < len && !is_token_end(s[ve]) && s[ve] != '&' && s[ve] != ';')
			ve++;
	}
	if (ve == vs)
		return false;
	*from = vs;
	*end = ve;
	return true;
}

/* Finds a secret starting at s[i]: [*from, *end) is what to mask. */
static bool match_secret(const char *s, size_t len, size_t i, size_t *from, size_t *end)
{
	char c = s[i];
	if (c == ':' && after_scheme_user(s, i)) {
		/* postgresql://user:PASSWORD@host */
		*end = userinfo_password_end(s, len, i);
		*from = i + 1;
		return *end > *from;
	}
	if (match_param(s, len, i, from, end))
		return true;
	if ((c == 'B' || c == 'b') && starts_with_ci(s, len, i, "bearer ") &&
	    (i == 0 || !is_param_char(s[i - 1]))) {
		size_t vs = i + 7, ve = vs;
		while (ve < len && !is_token_end(s[ve]) && s[ve] != ',')
			ve++;
		*from = vs;
		*end = ve;
		return ve > vs;
	}
	size_t kl = api_key_len(s, len, i);
	if (kl) {
		/* Keep the public prefix (sl_XXXXXXXX_) so keys stay traceable. */
		const char *us = memchr(s + i + 3, '_', kl - 3);
		*from = (size_t)(us - s) + 1;
		*end = i + kl;
		return true;
	}
	return false;
}

/* Bytes at which a secret can start (match_secret's first tests): the
 * scan skips everything else without calling it. */
static bool trigger(unsigned char c)
{
	switch (c) {
	case ':':
	case '?':
	case '&':
	case ' ':
	case ';':
	case '\t':
	case '\n':
	case '\r':
	case '#':
	case '\'':
	case '"':
	case ',':
	case '(':
	case 'B':
	case 'b':
	case 's': return true;
	default: return false;
	}
}

bool redact_value(struct buf *out, const char *s, size_t len)
{
	bool masked = false;
	size_t i = 0, copied = 0;
	while (i < len) {
		size_t from, end;
		if (i > 0 && !trigger((unsigned char)s[i])) {
			i++;
			continue;
		}
		if (match_secret(s, len, i, &from, &end) && from >= copied) {
			buf_add(out, s + copied, from - copied);
			buf_adds(out, REDACT_MASK);
			copied = i = end;
			masked = true;
			continue;
		}
		i++;
	}
	buf_add(out, s + copied, len - copied);
	return masked;
}
