/* The process context. Kept deliberately small: anything with behaviour
 * lives in its own module and is wired together by main.c. */
#include "core/app.h"

#include <string.h>

#include "core/clock.h"
#include "core/ids.h"

#ifndef SL_VERSION
#define SL_VERSION "0.0.0"
#endif

const char app_version[] = SL_VERSION;

void app_init(struct app *app, struct event_base *base, struct config *cfg)
{
	memset(app, 0, sizeof *app);
	app->base = base;
	app->cfg = cfg;
	id_random_hex(app->instance_id, APP_INSTANCE_ID_LEN / 2);
	app->started_us = clock_now_us();
}
