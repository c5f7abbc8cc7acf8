/* listen: a dedicated LISTEN connection. It owns the pg_conn and the set of
 * channels, re-issues LISTEN for each on every new session, and tells its
 * owner when a session's channels are live so it can refetch what a gap in
 * the connection may have hidden. */
#ifndef SL_DB_LISTEN_H
#define SL_DB_LISTEN_H

#include <stdbool.h>
#include <stddef.h>

#include "db/pg.h"

struct event_base;
struct pg_listener;

/* A notification on a channel of this listener. be_pid is the sender's
 * backend. The strings are valid during the call. */
typedef void (*pg_listener_notify_cb)(const char *channel, const char *payload, int be_pid,
                                      void *arg);

struct pg_listener_opts {
	/* Reconnect and connect timing; on_state, on_notify and arg are the
	 * listener's own and ignored here. */
	struct pg_conn_opts conn;
	/* Every LISTEN of a new session has succeeded: on the first connect and
	 * after every reconnect. Notifications sent while no session listened
	 * are lost, so the owner rereads what it watches here (a NOTIFY is a
	 * wake-up, the database the truth). May be NULL. */
	void (*on_resync)(void *arg);
};

/* Connects at once and keeps reconnecting until pg_listener_free().
 * on_notify may not be NULL; arg goes to it and to on_resync; opts may be
 * NULL. Returns NULL (logged) when conninfo cannot be parsed. The caller
 * frees it with pg_listener_free(). */
struct pg_listener *pg_listener_new(struct event_base *base, const char *conninfo,
                                    pg_listener_notify_cb on_notify, void *arg,
                                    const struct pg_listener_opts *opts)
        __attribute__((warn_unused_result));

/* Listens on channel from now on and on every later session; LISTEN goes
 * out at once when connected, each channel in its own batch (a failing
 * statement would roll back a LISTEN beside it). channel must be 1..63 of
 * [a-z0-9_]; false otherwise. Listening twice is true and changes nothing. */
bool pg_listener_listen(struct pg_listener *l, const char *channel)
        __attribute__((warn_unused_result));

/* Closes the connection; no callback fires afterwards. Safe from inside the
 * listener's callbacks. NULL is a no-op. */
void pg_listener_free(struct pg_listener *l);

/* Connected, and every channel's LISTEN on this session has succeeded. */
bool pg_listener_is_live(const struct pg_listener *l);
size_t pg_listener_channels(const struct pg_listener *l);
/* The connection's latest failure ("" for none), password masked. */
const char *pg_listener_last_error(const struct pg_listener *l);

/* Pure: channel is 1..63 characters of [a-z0-9_]. Such a name is safe to
 * put between double quotes as an SQL identifier. */
bool pg_listener_channel_valid(const char *channel);

#endif
