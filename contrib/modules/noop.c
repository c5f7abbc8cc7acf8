/* noop: a persistent test module that answers every task at once with
 * {"ok": true}, for the scheduler's throughput benchmark (100k tasks/s).
 *
 * It declares concurrency 256 so the daemon keeps up to 256 tasks in the
 * pipe, and sets .batch so the results of all the tasks one read() brought
 * go out in one write(). Tasks run one after another: each is instant.
 *
 * Build: cc -O2 -I contrib/sdk/c contrib/modules/noop.c -o contrib/modules/noop -lmsgpackc
 * Config: noop: { command: ["contrib/modules/noop"], persistent: true, concurrency: 256 } */
#define STAGELINE_MODULE_IMPLEMENTATION
#include "stageline_module.h"

static void noop_task(struct sl_task *t, void *arg)
{
	(void)arg;
	sl_result_json(t, "{\"ok\": true}");
}

int main(void)
{
	struct sl_module_config cfg = {.name = "noop",
	                               .version = "1.0",
	                               .persistent = true,
	                               .concurrency = 256,
	                               .batch = true};

	if (sl_module_hello(&cfg) != 0)
		return 1;
	return sl_module_run(noop_task, NULL);
}
