/* app: the process-wide context every subsystem is handed — the one event
 * loop, the settings, and this boot's identity. main() owns it. */
#ifndef SL_CORE_APP_H
#define SL_CORE_APP_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct config;

#define APP_INSTANCE_ID_LEN 16

struct app {
	struct event_base *base;
	struct config *cfg;
	char instance_id[APP_INSTANCE_ID_LEN + 1]; /* random per boot */
	int64_t started_us; /* wall clock at boot */
	bool stopping; /* SIGTERM seen: drain */
};

/* Fills the identity fields; base and cfg are the caller's. */
void app_init(struct app *app, struct event_base *base, struct config *cfg);

extern const char app_version[];

#endif
