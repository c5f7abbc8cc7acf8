/* stagelined: flags, configuration, and the wiring of one event loop with
 * the HTTP server and the database. Everything with behaviour lives in the
 * library; this file decides what runs and in which order it stops. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/app.h"
#include "core/config.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/sampler.h"
#include "core/scrub.h"
#include "core/xmalloc.h"
#include "db/listen.h"
#include "db/migrate.h"
#include "db/pg.h"
#include "db/pool.h"
#include "engine/engine.h"
#include "engine/instance.h"
#include "engine/pipeline.h"
#include "engine/quota.h"
#include "engine/scheduler.h"
#include "http/auth.h"
#include "http/api.h"
#include "http/router.h"
#include "http/server.h"
#include "http/sse.h"
#include "store/store.h"

extern char **environ;

static void usage(FILE *f)
{
	fprintf(f, "usage: stagelined [options]\n"
	           "\n"
	           "  -c, --config FILE        YAML configuration (see docs/configuration.md)\n"
	           "      --listen ADDR        HTTP listen address (host:port or unix:/path)\n"
	           "      --database-url URL   PostgreSQL connection string\n"
	           "      --log-format FMT     json (default) or text\n"
	           "      --log-level LEVEL    debug, info, warn or error\n"
	           "      --check-config       validate the configuration, list every error, exit\n"
	           "      --migrate-only       apply the database migrations and exit\n"
	           "      --version            print the version and exit\n"
	           "  -h, --help               this text\n"
	           "\n"
	           "Settings come from defaults, then the file, then STAGELINE_<SECTION>_<KEY>\n"
	           "environment variables, then these flags; each later one wins.\n");
}

enum {
	OPT_LISTEN = 256,
	OPT_DATABASE_URL,
	OPT_LOG_FORMAT,
	OPT_LOG_LEVEL,
	OPT_CHECK_CONFIG,
	OPT_MIGRATE_ONLY,
	OPT_VERSION,
};

enum run_mode { RUN_DAEMON, RUN_CHECK_CONFIG, RUN_MIGRATE_ONLY };

struct daemon {
	struct app app;
	const struct scrub *scrub; /* privacy.scrub, NULL when off; main() owns it */
	struct router *router;
	struct http_server *http;
	struct router *metrics_router; /* server.metrics_listen, when set */
	struct http_server *metrics_http;
	struct sampler *sampler;
	struct pg_conn *db_health;
	struct pg_pool *pool;
	struct pg_migrate *migrate;
	struct pg_listener *listener;
	struct instance *instance;
	struct instance *instance_leaving; /* instance_stop() under way */
	struct pipeline_set *pipelines;
	struct engine *engine;
	struct store *store;
	struct scheduler *sched;
	struct sse_hub *sse;
	bool http_done, sched_done; /* the two halves of a drain */
	struct event *hard_stop; /* bounds the drain */
	struct auth *auth;
	struct quota *quota;
	struct api_ctx api;
	enum run_mode mode;
	struct event *migrate_deadline;
	struct event *retry; /* the default project's creation, after a failure */
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *grace;
	int64_t stop_started_us;
	int exit_code;
};

static void instance_gone_cb(void *arg)
{
	struct daemon *d = arg;
	d->instance_leaving = NULL; /* it freed itself */
	event_base_loopexit(d->app.base, NULL);
}

static void daemon_stop_loop(struct daemon *d, const char *why)
{
	/* HTTP drained (or its grace passed); running tasks may still be
	 * finishing or committing their cancellation. */
	d->http_done = true;
	if (!d->sched_done)
		return;
	log_info("server.drained", why,
	         LF_UINT("open_connections", http_server_connections(d->http)));
	if (d->instance) {
		/* Take this instance's row away before leaving (bounded by the
		 * pool's own timeouts), so nobody waits for its leases to lapse. */
		d->instance_leaving = d->instance;
		d->instance = NULL;
		instance_stop(d->instance_leaving, instance_gone_cb, d);
		return;
	}
	event_base_loopexit(d->app.base, NULL);
}

static void http_drained_cb(void *arg)
{
	struct daemon *d = arg;
	/* The metrics listener stays up while the main one drains, so the
	 * drain itself can be watched; it goes last. */
	if (d->metrics_http)
		http_server_drain(d->metrics_http, NULL, NULL);
	daemon_stop_loop(d, "all connections closed");
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	daemon_stop_loop(arg, "shutdown grace expired");
}

static void sched_drained_cb(void *arg)
{
	struct daemon *d = arg;
	d->sched_done = true;
	if (d->http_done)
		daemon_stop_loop(d, "all connections closed and no task running");
}

static void hard_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	log_warn("server.stop", "tasks did not stop in time; stopping now",
	         LF_UINT("tasks", scheduler_running(d->sched)));
	d->sched_done = true;
	daemon_stop_loop(d, "drain deadline passed");
}

static void on_stop_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	if (d->app.stopping) {
		log_warn("server.stop", "second signal: stopping now", LF_INT("signal", sig));
		event_base_loopexit(d->app.base, NULL);
		return;
	}
	d->app.stopping = true;
	log_info("server.stopping", "draining", LF_INT("signal", sig),
	         LF_INT("shutdown_grace_ms", d->app.cfg->server.shutdown_grace_ms));
	int64_t ms = d->app.cfg->server.shutdown_grace_ms;
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	d->grace = evtimer_new(d->app.base, grace_cb, d);
	evtimer_add(d->grace, &tv);
	if (d->sched) {
		/* Cancelled modules get cancel_grace + kill_grace to die, then
		 * their tasks are committed back to ready. */
		struct timeval hard = {.tv_sec = ms / 1000 + 20, .tv_usec = (ms % 1000) * 1000};
		d->hard_stop = evtimer_new(d->app.base, hard_stop_cb, d);
		evtimer_add(d->hard_stop, &hard);
		scheduler_drain(d->sched, ms, sched_drained_cb, d);
	} else {
		d->sched_done = true;
	}
	/* Streams end now: their clients resume elsewhere with Last-Event-ID. */
	sse_hub_drain(d->sse);
	http_server_drain(d->http, http_drained_cb, d);
}

static void on_hup_cb(evutil_socket_t sig, short what, void *arg)
{
	if (log_reopen())
		log_info("log.reopen", "log file reopened");
	else
		log_error("log.reopen", "cannot reopen the log file",
		          LF_STR("error", strerror(errno)));
}

static int load_config(int argc, char **argv, struct config **out, struct pipeline_set **pipes,
                       enum run_mode *mode)
{
	static const struct option opts[] = {
	        {"config", required_argument, NULL, 'c'},
	        {"listen", required_argument, NULL, OPT_LISTEN},
	        {"database-url", required_argument, NULL, OPT_DATABASE_URL},
	        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
	        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	        {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
	        {"migrate-only", no_argument, NULL, OPT_MIGRATE_ONLY},
	        {"version", no_argument, NULL, OPT_VERSION},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	struct {
		const char *key, *value, *origin;
	} sets[8];
	size_t nsets = 0;
	int c;
	*mode = RUN_DAEMON;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case OPT_LISTEN:
			sets[nsets++] = (typeof(sets[0])){"server.listen", optarg, "--listen"};
			break;
		case OPT_DATABASE_URL:
			sets[nsets++] = (typeof(sets[0])){"database.url", optarg, "--database-url"};
			break;
		case OPT_LOG_FORMAT:
			sets[nsets++] = (typeof(sets[0])){"log.format", optarg, "--log-format"};
			break;
		case OPT_LOG_LEVEL:
			sets[nsets++] = (typeof(sets[0])){"log.level", optarg, "--log-level"};
			break;
		case OPT_CHECK_CONFIG: *mode = RUN_CHECK_CONFIG; break;
		case OPT_MIGRATE_ONLY: *mode = RUN_MIGRATE_ONLY; break;
		case OPT_VERSION: printf("stagelined %s\n", app_version); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (nsets == sizeof sets / sizeof sets[0]) {
			fprintf(stderr, "stagelined: too many flags\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "stagelined: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	struct config *cfg = config_new();
	struct config_errors errs = {0};
	/* Every layer runs even after an error, so all errors are listed at once;
	 * errs.n decides. */
	bool ok = path == NULL || config_load_file(cfg, path, &errs);
	ok = config_apply_env(cfg, environ, &errs) && ok;
	for (size_t i = 0; i < nsets; i++)
		ok = config_set(cfg, sets[i].key, sets[i].value, sets[i].origin, &errs) && ok;
	ok = config_validate(cfg, &errs) && ok;
	/* Pipelines are part of the configuration: --check-config lists their
	 * errors with the rest. */
	*pipes = pipeline_set_load(cfg, &errs);
	ok = *pipes != NULL && ok;
	if (!ok || errs.n) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "stagelined: %s\n", errs.msgs[i]);
		fprintf(stderr, "stagelined: %zu configuration error%s\n", errs.n,
		        errs.n == 1 ? "" : "s");
		config_errors_clear(&errs);
		pipeline_set_free(*pipes);
		*pipes = NULL;
		config_free(cfg);
		return 1;
	}
	*out = cfg;
	return -1;
}

static void log_metrics_overflow_cb(const char *name, size_t max_series, void *arg)
{
	log_warn("metrics.overflow", "label combinations past the cap are dropped",
	         LF_STR("metric", name), LF_UINT("max_series", max_series));
}

static bool daemon_routes(struct daemon *d)
{
	d->router = router_new();
	d->api.app = &d->app;
	d->api.db_health = d->db_health;
	d->api.engine = d->engine;
	d->api.pool = d->pool;
	d->api.store = d->store;
	d->api.auth = d->auth;
	d->api.quota = d->quota;
	d->api.pipelines = d->pipelines;
	d->sse = sse_hub_new(&d->api);
	bool ok =
	        api_health_register(d->router, &d->api) && api_jobs_register(d->router, &d->api) &&
	        api_artifacts_register(d->router, &d->api) &&
	        api_uploads_register(d->router, &d->api) && api_keys_register(d->router, &d->api) &&
	        api_sse_register(d->router, d->sse) && api_console_register(d->router, &d->api);
	if (*d->app.cfg->server.metrics_listen) {
		/* A separate listener serves only the metrics (and health). */
		d->metrics_router = router_new();
		ok = ok && api_metrics_register(d->metrics_router, &d->api, false) &&
		     api_health_register(d->metrics_router, &d->api);
	} else {
		ok = ok && api_metrics_register(d->router, &d->api, d->app.cfg->auth.enabled);
	}
	return ok;
}

static void default_project_create(struct daemon *d);

static void default_project_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	default_project_create(arg);
}

static bool default_project_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct daemon *d = arg;
	if (err && err->kind != PG_ERR_QUERY) {
		/* The database went away between the migration and now: retry. */
		struct timeval tv = {.tv_sec = 1};
		evtimer_add(d->retry, &tv);
		return false;
	}
	if (err) {
		log_error("server.start", "cannot create the default project; stopping",
		          LF_STR("error", err->message));
		d->exit_code = 1;
		event_base_loopexit(d->app.base, NULL);
		return false;
	}
	d->api.migrated = true;
	return false;
}

static void jobs_notify_cb(const char *channel, const char *payload, int be_pid, void *arg)
{
	struct daemon *d = arg;
	if (strcmp(channel, SCHEDULER_READY_CHANNEL) == 0) {
		scheduler_wake(d->sched);
		return;
	}
	/* The scheduler compares with the revision it knew before this news. */
	scheduler_on_job_notify(d->sched, payload);
	sse_hub_on_job_notify(d->sse, payload);
	engine_on_jobs_notify(d->engine, payload);
}

static void jobs_resync_cb(void *arg)
{
	struct daemon *d = arg;
	engine_resync(d->engine);
}

static void migrate_done_cb(bool ok, const char *error, void *arg)
{
	struct daemon *d = arg;
	pg_migrate_free(d->migrate);
	d->migrate = NULL;
	if (d->migrate_deadline)
		evtimer_del(d->migrate_deadline);
	if (!ok) {
		/* A schema this binary doesn't know how to run against: refuse. */
		log_error("server.start", "the database schema cannot be used; stopping",
		          LF_STR("error", error));
		d->exit_code = 1;
		event_base_loopexit(d->app.base, NULL);
		return;
	}
	if (d->mode == RUN_MIGRATE_ONLY) {
		event_base_loopexit(d->app.base, NULL);
		return;
	}
	d->instance = instance_start(&d->app, d->pool, d->app.cfg->scheduler.heartbeat_ms);
	/* Other instances' changes arrive on the LISTEN connection. */
	d->listener = pg_listener_new(d->app.base, d->app.cfg->database.url, jobs_notify_cb, d,
	                              &(struct pg_listener_opts){.conn = {.reconnect_max_ms = 2000},
	                                                         .on_resync = jobs_resync_cb});
	if (d->listener && pg_listener_listen(d->listener, ENGINE_JOBS_CHANNEL))
		engine_set_listener(d->engine, d->listener);
	if (d->listener && !pg_listener_listen(d->listener, SCHEDULER_READY_CHANNEL))
		log_warn("server.start", "cannot LISTEN for ready tasks; polling only",
		         LF_STR("channel", SCHEDULER_READY_CHANNEL));
	if (!d->app.stopping && d->app.cfg->scheduler.enabled) {
		struct config *cfg = d->app.cfg;
		char *scratch = config_resolve_path(cfg, cfg->scheduler.scratch_dir);
		struct scheduler_opts so = {
		        .max_concurrency = cfg->scheduler.max_concurrency,
		        .lease_ms = cfg->scheduler.lease_ms,
		        .heartbeat_ms = cfg->scheduler.heartbeat_ms,
		        .rescue_every_ms = cfg->scheduler.rescue_every_ms,
		        .poll_ms = cfg->scheduler.poll_ms,
		        .log_flush_ms = cfg->scheduler.log_flush_ms,
		        .scratch_dir = scratch,
		        .max_frame_bytes = cfg->limits.max_frame_bytes,
		        .scrub = d->scrub,
		};
		d->sched = scheduler_start(d->engine, d->store, &so);
		free(scratch);
		if (d->sched == NULL) {
			d->exit_code = 1;
			event_base_loopexit(d->app.base, NULL);
			return;
		}
		d->api.sched = d->sched;
	}
	if (d->app.cfg->auth.enabled) {
		d->api.migrated = true;
		return;
	}
	/* Without auth every request acts for this project (auth.h); the API
	 * opens only once it exists. */
	default_project_create(d);
}

static void default_project_create(struct daemon *d)
{
	if (d->retry == NULL)
		d->retry = evtimer_new(d->app.base, default_project_retry_cb, d);
	const char *v[1] = {AUTH_DEFAULT_PROJECT};
	(void)pg_pool_query(d->pool,
	                    "INSERT INTO projects (id, name) VALUES ($1, 'Default project') "
	                    "ON CONFLICT (id) DO NOTHING",
	                    1, v, default_project_cb, d);
}

static void migrate_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	log_error("db.migrate.failed", "the database did not become reachable in time",
	          LF_STR("error", pg_conn_last_error(d->db_health)));
	d->exit_code = 1;
	event_base_loopexit(d->app.base, NULL);
}

static int daemon_migrate_only(struct daemon *d)
{
	struct config *cfg = d->app.cfg;
	d->migrate = pg_migrate_start(d->app.base, cfg->database.url, NULL, migrate_done_cb, d);
	if (d->migrate == NULL)
		return 1;
	/* Only --migrate-only gives up: a daemon waits for its database. */
	d->migrate_deadline = evtimer_new(d->app.base, migrate_deadline_cb, d);
	struct timeval tv = {.tv_sec = 60};
	evtimer_add(d->migrate_deadline, &tv);
	d->db_health = pg_conn_new(d->app.base, cfg->database.url, "health", NULL);
	event_base_dispatch(d->app.base);
	return d->exit_code;
}

static int daemon_run(struct daemon *d)
{
	struct config *cfg = d->app.cfg;
	if (d->mode == RUN_MIGRATE_ONLY)
		return daemon_migrate_only(d);
	d->db_health = pg_conn_new(d->app.base, cfg->database.url, "health",
	                           &(struct pg_conn_opts){.reconnect_max_ms = 2000});
	if (d->db_health == NULL) {
		log_error("server.start", "database.url cannot be parsed");
		return 1;
	}
	/* Reconnect within 2 s once PostgreSQL is back: readiness and capacity
	 * return together. */
	struct pg_pool_opts popts = {.conn = {.reconnect_max_ms = 2000}};
	d->pool = pg_pool_new(d->app.base, cfg->database.url, (size_t)cfg->database.pool, &popts);
	if (d->pool == NULL) {
		log_error("server.start", "cannot create the database pool");
		return 1;
	}
	d->engine = engine_new(&d->app, d->pool, d->pipelines, NULL);
	char *serr = NULL;
	d->store = store_new(d->app.base, cfg, &serr);
	if (d->store == NULL) {
		log_error("server.start", "cannot open the object store", LF_STR("error", serr));
		free(serr);
		return 1;
	}
	char *jwt_pem = config_resolve_path(cfg, cfg->auth.jwt.public_key_file);
	struct auth_opts aopts = {
	        .enabled = cfg->auth.enabled,
	        .max_failures = cfg->auth.max_failures,
	        .failure_window_ms = cfg->auth.failure_window_ms,
	        .jwt_enabled = cfg->auth.jwt.enabled,
	        .jwt = {.issuer = cfg->auth.jwt.issuer,
	                .audience = cfg->auth.jwt.audience,
	                .leeway_ms = cfg->auth.jwt.leeway_ms,
	                .project_claim = cfg->auth.jwt.project_claim,
	                .scopes_claim = cfg->auth.jwt.scopes_claim},
	        .jwt_hs256_secret = cfg->auth.jwt.hs256_secret,
	        .jwt_hs256_kid = cfg->auth.jwt.hs256_kid,
	        .jwt_public_key_file = jwt_pem,
	        .jwt_public_key_kid = cfg->auth.jwt.public_key_kid,
	};
	d->auth = auth_new(d->pool, &aopts);
	free(jwt_pem);
	struct quota_limits ql = {
	        .max_concurrent_jobs = cfg->quota.max_concurrent_jobs,
	        .max_queued_jobs = cfg->quota.max_queued_jobs,
	        .max_input_bytes = cfg->quota.max_input_bytes,
	        .submissions_per_second = cfg->quota.submissions_per_second,
	};
	d->quota = quota_new(d->app.base, d->pool, &ql);
	if (d->pool == NULL || d->auth == NULL || d->quota == NULL || !engine_prepare(d->engine)) {
		log_error("server.start", "cannot set up the database statements");
		return 1;
	}
	/* The API listens at once (so /healthz answers); DB-backed routes and
	 * /readyz wait for the schema. */
	d->migrate = pg_migrate_start(d->app.base, cfg->database.url, NULL, migrate_done_cb, d);
	if (d->migrate == NULL)
		return 1;
	if (!daemon_routes(d)) {
		log_error("server.start", "route table is inconsistent");
		return 1;
	}
	struct http_server_opts hopts = {
	        .max_body_bytes = cfg->limits.max_input_bytes,
	        .max_header_bytes = cfg->limits.max_header_bytes,
	        .max_header_fields = cfg->limits.max_header_fields,
	        .header_timeout_ms = cfg->limits.header_timeout_ms,
	        .idle_timeout_ms = cfg->limits.idle_timeout_ms,
	        .instance_id = d->app.instance_id,
	};
	d->http = http_server_new(d->app.base, d->router, &hopts);
	char *err = NULL;
	if (!http_server_listen(d->http, cfg->server.listen, &err)) {
		log_error("server.start", err, LF_STR("listen", cfg->server.listen));
		free(err);
		return 1;
	}
	if (d->metrics_router) {
		d->metrics_http = http_server_new(d->app.base, d->metrics_router, &hopts);
		if (!http_server_listen(d->metrics_http, cfg->server.metrics_listen, &err)) {
			log_error("server.start", err,
			          LF_STR("metrics_listen", cfg->server.metrics_listen));
			free(err);
			return 1;
		}
	}
	char *scratch = config_resolve_path(cfg, cfg->scheduler.scratch_dir);
	d->sampler = sampler_start(d->app.base, scratch, 1000);
	free(scratch);
	d->sig_term = evsignal_new(d->app.base, SIGTERM, on_stop_signal_cb, d);
	d->sig_int = evsignal_new(d->app.base, SIGINT, on_stop_signal_cb, d);
	d->sig_hup = evsignal_new(d->app.base, SIGHUP, on_hup_cb, d);
	evsignal_add(d->sig_term, NULL);
	evsignal_add(d->sig_int, NULL);
	evsignal_add(d->sig_hup, NULL);

	log_info("server.start", "stagelined is listening", LF_STR("version", app_version),
	         LF_STR("listen", http_server_address(d->http)),
	         LF_STR("metrics_listen",
	                d->metrics_http ? http_server_address(d->metrics_http) : ""),
	         LF_STR("instance_id", d->app.instance_id), LF_INT("pid", getpid()));
	event_base_dispatch(d->app.base);
	return d->exit_code;
}

static void daemon_free(struct daemon *d)
{
	/* Holders of pending work go before what they hold: the HTTP servers
	 * abort their requests, which cancel engine operations and queries on
	 * live connections; the engine and auth go before the pool. */
	sampler_free(d->sampler);
	http_server_free(d->http);
	http_server_free(d->metrics_http);
	sse_hub_free(d->sse);
	instance_free(d->instance);
	instance_free(d->instance_leaving); /* the loop ended before it finished */
	pg_listener_free(d->listener);
	scheduler_free(d->sched);
	store_free(d->store);
	engine_free(d->engine);
	auth_free(d->auth);
	quota_free(d->quota);
	pg_migrate_free(d->migrate);
	pg_pool_free(d->pool);
	pg_conn_free(d->db_health);
	router_free(d->router);
	router_free(d->metrics_router);
	pipeline_set_free(d->pipelines);
	if (d->sig_term)
		event_free(d->sig_term);
	if (d->sig_int)
		event_free(d->sig_int);
	if (d->sig_hup)
		event_free(d->sig_hup);
	if (d->grace)
		event_free(d->grace);
	if (d->hard_stop)
		event_free(d->hard_stop);
	if (d->migrate_deadline)
		event_free(d->migrate_deadline);
	if (d->retry)
		event_free(d->retry);
}

int main(int argc, char **argv)
{
	struct config *cfg = NULL;
	struct pipeline_set *pipes = NULL;
	enum run_mode mode;
	int rc = load_config(argc, argv, &cfg, &pipes, &mode);
	if (rc >= 0)
		return rc;
	if (mode == RUN_CHECK_CONFIG) {
		printf("stagelined: configuration OK%s%s\n", cfg->path ? ": " : "",
		       cfg->path ? cfg->path : "");
		pipeline_set_free(pipes);
		config_free(cfg);
		return 0;
	}
	enum log_format fmt;
	enum log_level lvl;
	if (!log_format_parse(cfg->log.format, &fmt) || !log_level_parse(cfg->log.level, &lvl)) {
		fprintf(stderr, "stagelined: bad log settings\n");
		pipeline_set_free(pipes);
		config_free(cfg);
		return 1;
	}
	if (!log_open(cfg->log.file, fmt, lvl)) {
		fprintf(stderr, "stagelined: cannot open log file %s: %s\n", cfg->log.file,
		        strerror(errno));
		pipeline_set_free(pipes);
		config_free(cfg);
		return 1;
	}
	log_capture_stdio_stderr();
	signal(SIGPIPE, SIG_IGN);

	metrics_set_overflow_cb(metrics_default(), log_metrics_overflow_cb, NULL);
	metrics_set_enabled(metrics_default(), cfg->server.metrics);
	/* privacy.scrub: one scrubber for the process log and the scheduler */
	struct scrub *scrub = cfg->privacy.scrub ? scrub_new(cfg->privacy.scrub_fields,
	                                                     cfg->privacy.scrub_patterns)
	                                         : NULL;
	log_set_scrub(scrub);
	struct daemon d = {.scrub = scrub};
	struct event_base *base = event_base_new();
	/* Three priorities: everything runs at the middle one (the default);
	 * the log's batched write runs last in each loop pass. */
	if (event_base_priority_init(base, 3) != 0 || !log_batch_on(base))
		log_warn("server.start", "log batching unavailable: one write per line");
	app_init(&d.app, base, cfg);
	d.mode = mode;
	d.pipelines = pipes;
	int code = daemon_run(&d);
	daemon_free(&d);
	if (mode == RUN_MIGRATE_ONLY)
		log_info("db.migrate.exit", code ? "migrations failed" : "migrations applied",
		         LF_INT("exit_code", code));
	else
		log_info("server.stop",
		         code ? "stagelined stopped on an error" : "stagelined stopped",
		         LF_STR("version", app_version), LF_STR("listen", cfg->server.listen),
		         LF_STR("instance_id", d.app.instance_id), LF_INT("exit_code", code));
	log_batch_off();
	event_base_free(d.app.base);
	config_free(cfg);
	metrics_default_free();
	log_set_scrub(NULL);
	scrub_free(scrub);
	log_close();
	return code;
}
