/* stageline: the command-line client. The job commands (submit, status,
 * list, watch, ...) talk to the daemon's HTTP API and live in cli/jobs.c;
 * this file parses the global options, dispatches, and holds the bootstrap
 * an operator runs before any API key exists — projects and API keys,
 * straight against PostgreSQL with blocking libpq (fine for a one-shot
 * command; the daemon's rule against blocking is about its loop). It
 * generates keys with core/apikey, stores only their SHA-256, prints a new
 * key exactly once, and never prints a stored hash. Exit codes: 0 done, 1
 * failed (database, a duplicate, something missing), 2 usage; `watch` adds
 * 3 for a cancelled job. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/apikey.h"
#include "core/app.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/redact.h"
#include "core/xmalloc.h"
#include "cli/jobs.h"
#include "cli/output.h"

extern char **environ;

#define SCHEMA_MISSING_MSG \
	"the database has no stageline schema: run `stagelined --migrate-only` first"

/* RFC 3339 in UTC whatever the session's TimeZone and DateStyle. */
#define TS(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

struct cli {
	const char *database_url_flag;
	const char *config_path;
	bool json;
	PGconn *db;
	struct jobs_globals jobs; /* --url, --api-key for the job commands */
};

/* --- usage -------------------------------------------------------------- */

static const char usage_main[] =
        "usage: stageline [--url URL] [--api-key KEY] [--json] COMMAND ...\n"
        "       stageline [--database-url URL | -c stageline.yaml] [--json] COMMAND ...\n"
        "\n" JOBS_USAGE_SUMMARY "\n"
        "Bootstrap commands (they talk to PostgreSQL directly):\n"
        "  projects create ID [--name NAME]    create a project (tenant)\n"
        "  projects list                       list projects\n"
        "  keys create --project P --scopes S [--name N] [--expires-in 30d]\n"
        "                                      create an API key and print it once\n"
        "  keys list --project P               list a project's keys (never the secret)\n"
        "  keys revoke PREFIX                  revoke a key\n"
        "  keys rotate PREFIX [--grace SECS]   replace a key with a new one\n"
        "\n"
        "Options:\n"
        "      --url URL            the daemon's base URL (job commands; default\n"
        "                           $STAGELINE_URL, else http://127.0.0.1:8080)\n"
        "      --api-key KEY        an API key (job commands; default $STAGELINE_API_KEY)\n"
        "      --database-url URL   PostgreSQL connection string (bootstrap commands)\n"
        "  -c, --config FILE        read database.url from a stagelined config file\n"
        "      --json               machine-readable output\n"
        "      --version            print the version and exit\n"
        "  -h, --help               this text; `stageline COMMAND --help` for one command\n"
        "\n"
        "The database URL comes from --database-url, else STAGELINE_DATABASE_URL, else\n"
        "the -c file's database.url, else postgresql:///stageline?host=/var/run/postgresql.\n";

static const char usage_projects[] = "usage: stageline projects create ID [--name NAME]\n"
                                     "       stageline projects list\n";

static const char usage_projects_create[] =
        "usage: stageline projects create ID [--name NAME] [--json]\n"
        "\n"
        "Creates the project ID (1 to 63 of a-z, 0-9 and '-'; it appears in object\n"
        "keys and cannot change). NAME is a display name (default: the ID).\n"
        "Exits 1 if the project already exists.\n";

static const char usage_projects_list[] = "usage: stageline projects list [--json]\n"
                                          "\n"
                                          "Lists every project with its number of usable keys.\n";

static const char usage_keys[] =
        "usage: stageline keys create --project P --scopes S [--name N] [--expires-in DUR]\n"
        "       stageline keys list --project P\n"
        "       stageline keys revoke PREFIX\n"
        "       stageline keys rotate PREFIX [--grace SECONDS]\n";

static const char usage_keys_create[] =
        "usage: stageline keys create --project P --scopes S [--name N] [--expires-in DUR]\n"
        "                             [--json]\n"
        "\n"
        "Creates an API key for project P and prints it on stdout. It is shown only\n"
        "this once: the database keeps its SHA-256, not the key.\n"
        "\n"
        "  --scopes S     comma-separated: jobs:read, jobs:write, admin\n"
        "  --name N       a label for the key (who or what uses it)\n"
        "  --expires-in DUR  lifetime: a number and s, m, h, d or w (30d, 12h); default\n"
        "                 never (--expires is the same option)\n";

static const char usage_keys_list[] =
        "usage: stageline keys list --project P [--json]\n"
        "\n"
        "Lists the keys of project P: prefix, name, scopes, status and times. The\n"
        "secret is never stored and the hash is never shown.\n";

static const char usage_keys_revoke[] =
        "usage: stageline keys revoke PREFIX [--json]\n"
        "\n"
        "Revokes the key whose prefix is PREFIX (the 8 characters after sl_, or the\n"
        "sl_XXXXXXXX_ shape lists and logs show). Instances that cached the key\n"
        "stop accepting it within their cache TTL (10 s).\n";

static const char usage_keys_rotate[] =
        "usage: stageline keys rotate PREFIX [--grace SECONDS] [--json]\n"
        "\n"
        "Creates a new key with the same project, name, scopes and expiry as the key\n"
        "PREFIX and prints it on stdout, shown only this once. The old key is revoked\n"
        "at once, or with --grace keeps working for SECONDS more (0 to 86400; a\n"
        "number, or a number and s, m or h) unless it expires sooner, so clients can\n"
        "switch over. A revoked or expired key cannot be rotated (exit 1). Instances\n"
        "that cached the old key notice within their cache TTL (10 s).\n";

/* --- database ----------------------------------------------------------- */

static void notice_ignore(void *arg, const char *message)
{
}

/* The URL by precedence: flag, STAGELINE_DATABASE_URL, the file, default.
 * Returns NULL (reported) on a configuration error. Caller frees. */
static char *database_url(struct cli *c)
{
	if (c->database_url_flag)
		return xstrdup(c->database_url_flag);
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *url = NULL;
	if (c->config_path && !config_load_file(cfg, c->config_path, &errs)) {
		for (size_t i = 0; i < errs.n; i++)
			output_err("%s", errs.msgs[i]);
		goto out;
	}
	/* Only database.url matters here: a bad unrelated STAGELINE_* variable
	 * is the daemon's problem, so it is only a warning for the CLI. */
	if (!config_apply_env(cfg, environ, &errs))
		for (size_t i = 0; i < errs.n; i++)
			output_err("warning: %s", errs.msgs[i]);
	url = xstrdup(cfg->database.url ? cfg->database.url : "");
out:
	config_errors_clear(&errs);
	config_free(cfg);
	return url;
}

static int db_connect(struct cli *c)
{
	char *url = database_url(c);
	if (url == NULL)
		return EXIT_FAIL;
	if (*url == '\0') {
		output_err("the database URL is empty");
		free(url);
		return EXIT_FAIL;
	}
	/* Ours first: anything the URL itself says overrides them. */
	const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
	const char *const vals[] = {"10", "stageline-cli", url, NULL};
	c->db = PQconnectdbParams(keys, vals, 1);
	free(url);
	if (c->db == NULL || PQstatus(c->db) != CONNECTION_OK) {
		const char *m = c->db ? PQerrorMessage(c->db) : "out of memory";
		size_t n = strlen(m);
		while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
			n--;
		struct buf b = BUF_INIT;
		redact_value(&b, m, n);
		output_err("cannot connect to the database: %s", b.data ? b.data : "");
		buf_free(&b);
		return EXIT_FAIL;
	}
	PQsetNoticeProcessor(c->db, notice_ignore, NULL);
	return 0;
}

static PGresult *db_exec(struct cli *c, const char *sql, int n, const char *const *values)
{
	return PQexecParams(c->db, sql, n, NULL, values, NULL, NULL, 0);
}

static bool db_ok(const PGresult *r)
{
	ExecStatusType s = PQresultStatus(r);
	return s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK;
}

static const char *sqlstate(const PGresult *r)
{
	const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	return s ? s : "";
}

/* Reports a failed statement; the schema-missing case gets its own words. */
static int db_fail(struct cli *c, PGresult *r, const char *what)
{
	if (strcmp(sqlstate(r), "42P01") == 0) {
		output_err(SCHEMA_MISSING_MSG);
	} else {
		const char *m = r ? PQresultErrorMessage(r) : PQerrorMessage(c->db);
		size_t n = strlen(m);
		while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
			n--;
		output_err("%s: %.*s", what, (int)n, m);
	}
	PQclear(r);
	return EXIT_FAIL;
}

/* --- output ------------------------------------------------------------- */

static json_t *json_str_or_null(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

static const char *cell_or_dash(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? "-" : PQgetvalue(r, row, col);
}

static json_t *scopes_json(const char *list)
{
	json_t *a = json_array();
	while (*list) {
		const char *e = strchr(list, ',');
		size_t n = e ? (size_t)(e - list) : strlen(list);
		json_array_append_new(a, json_stringn(list, n));
		list += n + (e != NULL);
	}
	return a;
}

/* --- argument checks ---------------------------------------------------- */

static bool project_id_valid(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
			return false;
	}
	return true;
}

/* "30d", "12h", "90m", "3600s", "2w" -> seconds (positive, at most 100 years). */
static bool parse_lifetime(const char *s, int64_t *secs)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || v <= 0 || *s == '+' || *s == ' ')
		return false;
	int64_t unit;
	if (strcmp(end, "s") == 0)
		unit = 1;
	else if (strcmp(end, "m") == 0)
		unit = 60;
	else if (strcmp(end, "h") == 0)
		unit = 3600;
	else if (strcmp(end, "d") == 0)
		unit = 86400;
	else if (strcmp(end, "w") == 0)
		unit = 7 * 86400;
	else
		return false;
	if (v > APIKEY_LIFETIME_MAX_S / unit)
		return false;
	*secs = v * unit;
	return true;
}

/* PREFIX as a user may paste it: "AbCd1234", "sl_AbCd1234", "sl_AbCd1234_"
 * or a whole key (only its prefix is used). */
static bool normalize_prefix(const char *s, char out[APIKEY_PREFIX_LEN + 1])
{
	size_t n = strlen(s);
	if (n == APIKEY_LEN) {
		struct apikey k;
		if (apikey_parse(s, n, &k) != APIKEY_OK)
			return false;
		memcpy(out, k.prefix, APIKEY_PREFIX_LEN + 1);
		OPENSSL_cleanse(&k, sizeof k);
		return true;
	}
	if (strncmp(s, APIKEY_TAG, APIKEY_TAG_LEN) == 0) {
		s += APIKEY_TAG_LEN;
		n -= APIKEY_TAG_LEN;
		if (n == APIKEY_PREFIX_LEN + 1 && s[APIKEY_PREFIX_LEN] == '_')
			n--;
	}
	if (n != APIKEY_PREFIX_LEN)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!apikey_is_base62(s[i]))
			return false;
	memcpy(out, s, n);
	out[n] = '\0';
	return true;
}

/* --- per-command option parsing ----------------------------------------- */

enum { OPT_NAME = 256, OPT_PROJECT, OPT_SCOPES, OPT_EXPIRES, OPT_GRACE, OPT_JSON };

struct cmd_opts {
	const char *name, *project, *scopes, *expires, *grace;
	bool help;
	char **pos; /* positional arguments */
	int npos;
};

/* Parses argv (argv[0] is the command's last word) with the options in
 * allowed ("n" name, "p" project, "s" scopes, "e" expires, "g" grace).
 * Returns 0, or
 * EXIT_USAGE after printing usage. */
static int parse_cmd(struct cli *c, int argc, char **argv, const char *allowed, const char *usage,
                     struct cmd_opts *o)
{
	static const struct option longopts[] = {
	        {"name", required_argument, NULL, OPT_NAME},
	        {"project", required_argument, NULL, OPT_PROJECT},
	        {"scopes", required_argument, NULL, OPT_SCOPES},
	        {"expires", required_argument, NULL, OPT_EXPIRES},
	        {"expires-in", required_argument, NULL, OPT_EXPIRES},
	        {"grace", required_argument, NULL, OPT_GRACE},
	        {"json", no_argument, NULL, OPT_JSON},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	memset(o, 0, sizeof *o);
	optind = 0; /* GNU: reinitialise */
	opterr = 0;
	int ch, idx = -1;
	while ((ch = getopt_long(argc, argv, ":h", longopts, &idx)) != -1) {
		char letter = 0;
		switch (ch) {
		case 'h': o->help = true; break;
		case OPT_JSON: c->json = true; break;
		case OPT_NAME:
			letter = 'n';
			o->name = optarg;
			break;
		case OPT_PROJECT:
			letter = 'p';
			o->project = optarg;
			break;
		case OPT_SCOPES:
			letter = 's';
			o->scopes = optarg;
			break;
		case OPT_EXPIRES:
			letter = 'e';
			o->expires = optarg;
			break;
		case OPT_GRACE:
			letter = 'g';
			o->grace = optarg;
			break;
		case ':': return output_usage_error(usage, "%s needs a value", argv[optind - 1]);
		default: return output_usage_error(usage, "unknown option '%s'", argv[optind - 1]);
		}
		if (letter && !strchr(allowed, letter))
			return output_usage_error(usage, "--%s does not apply to this command",
			                          longopts[idx].name);
		idx = -1;
	}
	o->pos = argv + optind;
	o->npos = argc - optind;
	if (o->help) {
		fputs(usage, stdout);
		return -1;
	}
	return 0;
}

/* --- projects ----------------------------------------------------------- */

static int cmd_projects_create(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "n", usage_projects_create, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (o.npos != 1)
		return output_usage_error(usage_projects_create,
		                          o.npos ? "too many arguments"
		                                 : "the project ID is missing");
	const char *id = o.pos[0];
	if (!project_id_valid(id))
		return output_usage_error(
		        usage_projects_create,
		        "invalid project ID '%s': use 1 to 63 of a-z, 0-9 and '-'", id);
	const char *name = o.name ? o.name : id;
	if ((rc = db_connect(c)) != 0)
		return rc;
	const char *vals[2] = {id, name};
	PGresult *r = db_exec(c,
	                      "INSERT INTO projects (id, name) VALUES ($1, $2)"
	                      " RETURNING id, name, " TS("created_at"),
	                      2, vals);
	if (!db_ok(r)) {
		if (strcmp(sqlstate(r), "23505") == 0) {
			output_err("project '%s' already exists", id);
			PQclear(r);
			return EXIT_FAIL;
		}
		return db_fail(c, r, "cannot create the project");
	}
	if (c->json)
		output_json(json_pack("{s:s, s:s, s:s}", "id", PQgetvalue(r, 0, 0), "name",
		                      PQgetvalue(r, 0, 1), "created_at", PQgetvalue(r, 0, 2)));
	else
		printf("created project %s\n", PQgetvalue(r, 0, 0));
	PQclear(r);
	return 0;
}

static int cmd_projects_list(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "", usage_projects_list, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (o.npos)
		return output_usage_error(usage_projects_list, "too many arguments");
	if ((rc = db_connect(c)) != 0)
		return rc;
	PGresult *r = db_exec(
	        c,
	        "SELECT p.id, p.name, " TS(
	                "p.created_at") ","
	                                " (SELECT count(*) FROM api_keys k WHERE k.project_id = "
	                                "p.id"
	                                "   AND k.revoked_at IS NULL"
	                                "   AND (k.expires_at IS NULL OR k.expires_at > now()))"
	                                " FROM projects p ORDER BY p.id",
	        0, NULL);
	if (!db_ok(r))
		return db_fail(c, r, "cannot list projects");
	int n = PQntuples(r);
	if (c->json) {
		json_t *a = json_array();
		for (int i = 0; i < n; i++)
			json_array_append_new(
			        a, json_pack("{s:s, s:s, s:s, s:I}", "id", PQgetvalue(r, i, 0),
			                     "name", PQgetvalue(r, i, 1), "created_at",
			                     PQgetvalue(r, i, 2), "active_keys",
			                     (json_int_t)strtoll(PQgetvalue(r, i, 3), NULL, 10)));
		output_json(a);
	} else {
		static const char *const head[] = {"ID", "NAME", "CREATED", "ACTIVE KEYS"};
		char **cells = xcalloc((size_t)n * 4 + 1, sizeof *cells);
		for (int i = 0; i < n; i++)
			for (int j = 0; j < 4; j++)
				cells[i * 4 + j] = PQgetvalue(r, i, j);
		output_table(head, 4, cells, (size_t)n, 0);
		free(cells);
	}
	PQclear(r);
	return 0;
}

/* --- keys --------------------------------------------------------------- */

/* The one positional argument of `keys revoke|rotate`: a key prefix. 0, or
 * the usage error's exit status. */
static int prefix_arg(const struct cmd_opts *o, const char *usage,
                      char prefix[APIKEY_PREFIX_LEN + 1])
{
	if (o->npos != 1)
		return output_usage_error(usage, o->npos ? "too many arguments"
		                                         : "the key PREFIX is missing");
	if (!normalize_prefix(o->pos[0], prefix))
		return output_usage_error(
		        usage,
		        "'%s' is not a key prefix (8 characters of 0-9, A-Z, a-z, "
		        "optionally as sl_XXXXXXXX_)",
		        strlen(o->pos[0]) == APIKEY_LEN ? "(a key)" : o->pos[0]);
	return 0;
}

/* Draws a new key into *key and runs sql with vals, where vals[at],
 * vals[at + 1] and vals[at + 2] become its row id, prefix and hash (hex).
 * A prefix collision (one in 2^47 per existing key) draws again. NULL
 * (said, key wiped) when OpenSSL cannot hash; else the last result. */
static PGresult *exec_with_new_key(struct cli *c, struct apikey *key, const char *sql, int n,
                                   const char **vals, int at)
{
	PGresult *r = NULL;
	char hash_hex[2 * APIKEY_HASH_LEN + 1], id[ID_UUID_LEN + 1];
	for (int attempt = 0; attempt < 3; attempt++) {
		apikey_generate(key);
		uint8_t hash[APIKEY_HASH_LEN];
		if (!apikey_hash_secret(key->secret, hash)) {
			output_err("cannot hash the key (OpenSSL failed)");
			OPENSSL_cleanse(key, sizeof *key);
			PQclear(r);
			return NULL;
		}
		buf_hex(hash_hex, hash, sizeof hash);
		id_uuid7(id);
		vals[at] = id;
		vals[at + 1] = key->prefix;
		vals[at + 2] = hash_hex;
		PQclear(r);
		r = db_exec(c, sql, n, vals);
		if (db_ok(r) || strcmp(sqlstate(r), "23505") != 0)
			break;
	}
	return r;
}

static int cmd_keys_create(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "npse", usage_keys_create, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (o.npos)
		return output_usage_error(usage_keys_create, "unexpected argument '%s'", o.pos[0]);
	if (o.project == NULL)
		return output_usage_error(usage_keys_create, "--project is required");
	if (o.scopes == NULL)
		return output_usage_error(usage_keys_create,
		                          "--scopes is required (jobs:read, jobs:write, admin)");
	if (!project_id_valid(o.project))
		return output_usage_error(usage_keys_create, "invalid project ID '%s'", o.project);
	unsigned mask;
	char bad[64];
	if (!apikey_scopes_parse(o.scopes, &mask, bad, sizeof bad))
		return output_usage_error(
		        usage_keys_create,
		        *bad ? "unknown scope '%s' (known: jobs:read, jobs:write, admin)"
		             : "empty scope in '%s' (known: jobs:read, jobs:write, admin)",
		        *bad ? bad : o.scopes);
	int64_t lifetime = 0;
	if (o.expires && !parse_lifetime(o.expires, &lifetime))
		return output_usage_error(
		        usage_keys_create,
		        "bad --expires-in '%s': use a number and s, m, h, d or w (30d)", o.expires);
	if ((rc = db_connect(c)) != 0)
		return rc;

	char scopes[APIKEY_SCOPES_MAX_TEXT];
	apikey_scopes_format(mask, scopes, sizeof scopes);
	char lifetime_s[24];
	snprintf(lifetime_s, sizeof lifetime_s, "%lld", (long long)lifetime);
	struct apikey key;
	const char *vals[7] = {NULL,
	                       NULL,
	                       NULL,
	                       o.project,
	                       scopes,
	                       o.name ? o.name : "",
	                       o.expires ? lifetime_s : NULL};
	PGresult *r =
	        exec_with_new_key(c, &key,
	                          "INSERT INTO api_keys (id, prefix, hash, project_id, scopes,"
	                          " name, expires_at) VALUES ($1, $2, decode($3, 'hex'), $4,"
	                          " string_to_array($5, ','), $6,"
	                          " now() + $7::int8 * interval '1 second')"
	                          " RETURNING " TS("created_at") ", " TS("expires_at"),
	                          7, vals, 0);
	if (r == NULL)
		return EXIT_FAIL;
	if (!db_ok(r)) {
		OPENSSL_cleanse(&key, sizeof key);
		if (strcmp(sqlstate(r), "23503") == 0) {
			output_err(
			        "no project '%s' (create it with `stageline projects create %s`)",
			        o.project, o.project);
			PQclear(r);
			return EXIT_FAIL;
		}
		return db_fail(c, r, "cannot create the key");
	}
	const char *expires = PQgetisnull(r, 0, 1) ? NULL : PQgetvalue(r, 0, 1);
	if (c->json) {
		json_t *j =
		        json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:o}", "key", key.text, "prefix",
		                  key.prefix, "project", o.project, "name", o.name ? o.name : "",
		                  "scopes", scopes_json(scopes), "created_at", PQgetvalue(r, 0, 0),
		                  "expires_at", expires ? json_string(expires) : json_null());
		output_json(j);
	} else {
		printf("%s\n", key.text);
	}
	fflush(stdout);
	fprintf(stderr,
	        "stageline: created key sl_%s_ for project %s (scopes %s, expires %s).\n"
	        "stageline: this is the only time the key is shown: store it now; it cannot be "
	        "shown again.\n",
	        key.prefix, o.project, scopes, expires ? expires : "never");
	OPENSSL_cleanse(&key, sizeof key);
	PQclear(r);
	return 0;
}

static const char sql_keys_list[] =
        "SELECT prefix, name, array_to_string(scopes, ','),"
        " CASE WHEN revoked_at IS NOT NULL AND revoked_at <= now() THEN 'revoked'"
        "      WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'"
        "      ELSE 'active' END, " TS("created_at") ", " TS("expires_at") ", " TS(
                "last_used_at") ", " TS("revoked_at") " FROM api_keys WHERE project_id = $1"
                                                      " ORDER BY created_at, prefix";

static int cmd_keys_list(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "p", usage_keys_list, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	if (o.npos)
		return output_usage_error(usage_keys_list, "unexpected argument '%s'", o.pos[0]);
	if (o.project == NULL)
		return output_usage_error(usage_keys_list, "--project is required");
	if ((rc = db_connect(c)) != 0)
		return rc;
	const char *vals[1] = {o.project};
	PGresult *r = db_exec(c, "SELECT 1 FROM projects WHERE id = $1", 1, vals);
	if (!db_ok(r))
		return db_fail(c, r, "cannot list keys");
	bool exists = PQntuples(r) == 1;
	PQclear(r);
	if (!exists) {
		output_err("no project '%s'", o.project);
		return EXIT_FAIL;
	}
	r = db_exec(c, sql_keys_list, 1, vals);
	if (!db_ok(r))
		return db_fail(c, r, "cannot list keys");
	int n = PQntuples(r);
	if (c->json) {
		json_t *a = json_array();
		for (int i = 0; i < n; i++)
			json_array_append_new(
			        a, json_pack("{s:s, s:s, s:o, s:s, s:s, s:o, s:o, s:o}", "prefix",
			                     PQgetvalue(r, i, 0), "name", PQgetvalue(r, i, 1),
			                     "scopes", scopes_json(PQgetvalue(r, i, 2)), "status",
			                     PQgetvalue(r, i, 3), "created_at", PQgetvalue(r, i, 4),
			                     "expires_at", json_str_or_null(r, i, 5),
			                     "last_used_at", json_str_or_null(r, i, 6),
			                     "revoked_at", json_str_or_null(r, i, 7)));
		output_json(a);
	} else {
		enum { NC = 8 };
		static const char *const head[NC] = {"PREFIX",  "NAME",    "SCOPES",    "STATUS",
		                                     "CREATED", "EXPIRES", "LAST USED", "REVOKED"};
		char **cells = xcalloc((size_t)n * NC + 1, sizeof *cells);
		for (int i = 0; i < n; i++) {
			cells[i * NC] = xasprintf("sl_%s_", PQgetvalue(r, i, 0));
			const char *name = PQgetvalue(r, i, 1);
			cells[i * NC + 1] = xstrdup(*name ? name : "-");
			for (int j = 2; j < NC; j++)
				cells[i * NC + j] = xstrdup(cell_or_dash(r, i, j));
		}
		output_table(head, NC, cells, (size_t)n, 0);
		for (size_t i = 0; i < (size_t)n * NC; i++)
			free(cells[i]);
		free(cells);
	}
	PQclear(r);
	return 0;
}

static int cmd_keys_revoke(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "", usage_keys_revoke, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	char prefix[APIKEY_PREFIX_LEN + 1];
	if ((rc = prefix_arg(&o, usage_keys_revoke, prefix)) != 0)
		return rc;
	if ((rc = db_connect(c)) != 0)
		return rc;
	const char *vals[1] = {prefix};
	PGresult *r = db_exec(c,
	                      "UPDATE api_keys SET revoked_at = now()"
	                      " WHERE prefix = $1 AND (revoked_at IS NULL OR revoked_at > now())"
	                      " RETURNING project_id, " TS("revoked_at"),
	                      1, vals);
	if (!db_ok(r))
		return db_fail(c, r, "cannot revoke the key");
	bool already = false;
	if (PQntuples(r) == 0) {
		PQclear(r);
		r = db_exec(
		        c,
		        "SELECT project_id, " TS("revoked_at") " FROM api_keys WHERE prefix = $1",
		        1, vals);
		if (!db_ok(r))
			return db_fail(c, r, "cannot revoke the key");
		if (PQntuples(r) == 0) {
			output_err("no key with prefix sl_%s_", prefix);
			PQclear(r);
			return EXIT_FAIL;
		}
		already = true;
	}
	if (c->json)
		output_json(json_pack("{s:s, s:s, s:s, s:b}", "prefix", prefix, "project",
		                      PQgetvalue(r, 0, 0), "revoked_at", PQgetvalue(r, 0, 1),
		                      "already_revoked", already));
	else if (already)
		printf("key sl_%s_ (project %s) was already revoked at %s\n", prefix,
		       PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
	else
		printf("revoked key sl_%s_ (project %s)\n", prefix, PQgetvalue(r, 0, 0));
	PQclear(r);
	return 0;
}

/* --grace: whole seconds ("90"), or a lifetime ("30s", "15m", "1h"); 0 to
 * APIKEY_ROTATE_GRACE_MAX_S. */
static bool parse_grace(const char *s, int64_t *secs)
{
	size_t n = strlen(s);
	bool digits = n > 0 && n < 10;
	for (size_t i = 0; digits && i < n; i++)
		digits = s[i] >= '0' && s[i] <= '9';
	int64_t v;
	if (digits)
		v = strtoll(s, NULL, 10);
	else if (!parse_lifetime(s, &v))
		return false;
	if (v < 0 || v > APIKEY_ROTATE_GRACE_MAX_S)
		return false;
	*secs = v;
	return true;
}

/* The same statement as the daemon's POST /v1/keys/{prefix}/rotate
 * (src/http/api_keys.c), without the project and scope fences an operator
 * at the database does not need. No row: no such key. */
static const char sql_keys_rotate[] =
        "WITH old AS (SELECT * FROM api_keys WHERE prefix = $1 FOR UPDATE),"
        " ok AS (SELECT o.* FROM old o WHERE (o.revoked_at IS NULL OR o.revoked_at > now())"
        "  AND (o.expires_at IS NULL OR o.expires_at > now())),"
        " ins AS (INSERT INTO api_keys (id, project_id, prefix, hash, scopes, name, expires_at)"
        "  SELECT $2, o.project_id, $3, decode($4, 'hex'), o.scopes, o.name, o.expires_at"
        "  FROM ok o RETURNING " TS("created_at") " AS c, " TS(
                "expires_at") " AS e),"
                              " upd AS (UPDATE api_keys AS k SET"
                              "  revoked_at = CASE WHEN $5::int8 = 0 THEN now() ELSE k.revoked_at "
                              "END,"
                              "  expires_at = CASE WHEN $5::int8 = 0 THEN k.expires_at"
                              "   ELSE least(k.expires_at, now() + $5::int8 * interval '1 second') "
                              "END"
                              "  FROM ok o WHERE k.id = o.id"
                              "  RETURNING " TS("k.revoked_at") " AS r, " TS(
                                      "k.expires_at") " AS e)"
                                                      " SELECT CASE WHEN o.revoked_at IS NOT NULL "
                                                      "AND o.revoked_at <= now() THEN 'revoked'"
                                                      "  WHEN o.expires_at IS NOT NULL AND "
                                                      "o.expires_at <= now() THEN 'expired'"
                                                      "  ELSE 'ok' END, o.project_id, o.name, "
                                                      "array_to_string(o.scopes, ','),"
                                                      "  (SELECT c FROM ins), (SELECT e FROM ins), "
                                                      "(SELECT r FROM upd), (SELECT e FROM upd)"
                                                      " FROM old o";

static int cmd_keys_rotate(struct cli *c, int argc, char **argv)
{
	struct cmd_opts o;
	int rc = parse_cmd(c, argc, argv, "g", usage_keys_rotate, &o);
	if (rc)
		return rc < 0 ? 0 : rc;
	char prefix[APIKEY_PREFIX_LEN + 1];
	if ((rc = prefix_arg(&o, usage_keys_rotate, prefix)) != 0)
		return rc;
	int64_t grace = 0;
	if (o.grace && !parse_grace(o.grace, &grace))
		return output_usage_error(usage_keys_rotate,
		                          "bad --grace '%s': seconds from 0 to 86400 (or 30s, 15m, "
		                          "1h)",
		                          o.grace);
	if ((rc = db_connect(c)) != 0)
		return rc;
	char grace_s[24];
	snprintf(grace_s, sizeof grace_s, "%lld", (long long)grace);
	struct apikey key;
	const char *vals[5] = {prefix, NULL, NULL, NULL, grace_s};
	PGresult *r = exec_with_new_key(c, &key, sql_keys_rotate, 5, vals, 1);
	if (r == NULL)
		return EXIT_FAIL;
	if (!db_ok(r)) {
		OPENSSL_cleanse(&key, sizeof key);
		return db_fail(c, r, "cannot rotate the key");
	}
	if (PQntuples(r) == 0) {
		OPENSSL_cleanse(&key, sizeof key);
		output_err("no key with prefix sl_%s_", prefix);
		PQclear(r);
		return EXIT_FAIL;
	}
	const char *outcome = PQgetvalue(r, 0, 0);
	if (strcmp(outcome, "ok") != 0) {
		OPENSSL_cleanse(&key, sizeof key);
		output_err("key sl_%s_ is %s: only a usable key can be rotated", prefix, outcome);
		PQclear(r);
		return EXIT_FAIL;
	}
	const char *project = PQgetvalue(r, 0, 1), *name = PQgetvalue(r, 0, 2),
	           *scopes = PQgetvalue(r, 0, 3), *created = PQgetvalue(r, 0, 4);
	const char *expires = PQgetisnull(r, 0, 5) ? NULL : PQgetvalue(r, 0, 5);
	const char *old_revoked = PQgetisnull(r, 0, 6) ? NULL : PQgetvalue(r, 0, 6);
	const char *old_expires = PQgetisnull(r, 0, 7) ? NULL : PQgetvalue(r, 0, 7);
	if (c->json) {
		json_t *old = json_pack("{s:s, s:o, s:o}", "prefix", prefix, "revoked_at",
		                        old_revoked ? json_string(old_revoked) : json_null(),
		                        "expires_at",
		                        old_expires ? json_string(old_expires) : json_null());
		output_json(json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:o, s:o}", "key", key.text,
		                      "prefix", key.prefix, "project", project, "name", name,
		                      "scopes", scopes_json(scopes), "created_at", created,
		                      "expires_at", expires ? json_string(expires) : json_null(),
		                      "replaces", old));
	} else {
		printf("%s\n", key.text);
	}
	fflush(stdout);
	if (old_revoked)
		fprintf(stderr,
		        "stageline: rotated key sl_%s_ to sl_%s_ (project %s); the old key is "
		        "revoked.\n",
		        prefix, key.prefix, project);
	else
		fprintf(stderr,
		        "stageline: rotated key sl_%s_ to sl_%s_ (project %s); the old key works "
		        "until %s.\n",
		        prefix, key.prefix, project, old_expires ? old_expires : "?");
	fprintf(stderr, "stageline: this is the only time the new key is shown: store it now.\n");
	OPENSSL_cleanse(&key, sizeof key);
	PQclear(r);
	return 0;
}

/* --- dispatch ----------------------------------------------------------- */

struct command {
	const char *group, *verb;
	int (*fn)(struct cli *c, int argc, char **argv);
};

static const struct command commands[] = {
        {"projects", "create", cmd_projects_create}, {"projects", "list", cmd_projects_list},
        {"keys", "create", cmd_keys_create},         {"keys", "list", cmd_keys_list},
        {"keys", "revoke", cmd_keys_revoke},         {"keys", "rotate", cmd_keys_rotate},
};

static const char *group_usage(const char *group)
{
	return strcmp(group, "projects") == 0 ? usage_projects : usage_keys;
}

static int run(struct cli *c, int argc, char **argv)
{
	enum { G_DATABASE_URL = 300, G_JSON, G_VERSION, G_URL, G_API_KEY };
	static const struct option longopts[] = {
	        {"database-url", required_argument, NULL, G_DATABASE_URL},
	        {"url", required_argument, NULL, G_URL},
	        {"api-key", required_argument, NULL, G_API_KEY},
	        {"config", required_argument, NULL, 'c'},
	        {"json", no_argument, NULL, G_JSON},
	        {"version", no_argument, NULL, G_VERSION},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	opterr = 0;
	int ch;
	/* '+': stop at the command, whose options are its own */
	while ((ch = getopt_long(argc, argv, "+:c:h", longopts, NULL)) != -1) {
		switch (ch) {
		case G_DATABASE_URL: c->database_url_flag = optarg; break;
		case 'c': c->config_path = optarg; break;
		case G_URL: c->jobs.url = optarg; break;
		case G_API_KEY: c->jobs.api_key = optarg; break;
		case G_JSON: c->json = true; break;
		case G_VERSION: printf("stageline %s\n", app_version); return 0;
		case 'h': fputs(usage_main, stdout); return 0;
		case ':':
			return output_usage_error(usage_main, "%s needs a value", argv[optind - 1]);
		default:
			return output_usage_error(usage_main, "unknown option '%s'",
			                          argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return output_usage_error(usage_main, "no command given");
	const char *group = argv[optind];
	if (strcmp(group, "help") == 0) {
		fputs(usage_main, stdout);
		return 0;
	}
	if (jobs_is_command(group)) {
		c->jobs.json = c->json;
		return jobs_run(&c->jobs, argc - optind, argv + optind);
	}
	bool known_group = false;
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		known_group = known_group || strcmp(commands[i].group, group) == 0;
	if (!known_group)
		return output_usage_error(usage_main, "unknown command '%s'", group);
	if (optind + 1 >= argc)
		return output_usage_error(group_usage(group), "'%s' needs a subcommand", group);
	const char *verb = argv[optind + 1];
	if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 || strcmp(verb, "help") == 0) {
		fputs(group_usage(group), stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(commands[i].group, group) == 0 && strcmp(commands[i].verb, verb) == 0)
			return commands[i].fn(c, argc - optind - 1, argv + optind + 1);
	return output_usage_error(group_usage(group), "unknown command '%s %s'", group, verb);
}

int main(int argc, char **argv)
{
	struct cli c = {0};
	int rc = run(&c, argc, argv);
	if (c.db)
		PQfinish(c.db);
	if (fflush(stdout) != 0 && rc == 0) {
		output_err("cannot write the output: %s", strerror(errno));
		rc = EXIT_FAIL;
	}
	return rc;
}
