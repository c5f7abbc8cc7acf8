/* cli/jobs: the job commands of `stageline` (submit, status, list, watch,
 * cancel, retry, attempts, logs, artifacts, pipelines), which talk to the daemon's HTTP API. */
#ifndef SL_CLI_JOBS_H
#define SL_CLI_JOBS_H

#include <stdbool.h>

/* What the global options said; NULL means not given. */
struct jobs_globals {
	const char *url;
	const char *api_key;
	bool json;
};

/* The job commands' lines for the main usage text. */
#define JOBS_USAGE_SUMMARY                                                                        \
	"Job commands (they talk to the daemon's HTTP API):\n"                                    \
	"  submit PIPELINE [--param K=V ...] [--params-file F] [--input-file F | --input JSON]\n" \
	"         [--idempotency-key K] [--resume-from JOB_ID:STAGE] [--wait]\n"                  \
	"                                      submit a job and print its id\n"                   \
	"  status JOB_ID                       a job and its stages\n"                            \
	"  list [--status S] [--pipeline P] [--limit N] [--all]\n"                                \
	"                                      list jobs, newest first\n"                         \
	"  watch JOB_ID [--interval S]         follow a job until it settles\n"                   \
	"  cancel JOB_ID                       cancel a job\n"                                    \
	"  retry JOB_ID [--from-stage S]       run a settled job again from a stage\n"            \
	"  attempts JOB_ID STAGE               every attempt at running one stage\n"              \
	"  logs JOB_ID [--stage S] [-f]        the stages' logs; -f follows them live\n"          \
	"  artifacts JOB_ID [--stage S]        the files the stages stored\n"                     \
	"  pipelines                           the pipelines the daemon runs\n"

/* Whether name is a job command. */
bool jobs_is_command(const char *name);

/* Runs the job command argv[0] with its arguments (getopt-style argv);
 * returns the exit code: 0 done, 1 failed, 2 usage; `watch`, `logs -f` and
 * `submit --wait` return the job's outcome (0 completed, 1 failed,
 * 3 cancelled). */
int jobs_run(const struct jobs_globals *g, int argc, char **argv);

#endif
