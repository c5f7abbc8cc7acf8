/* pgjson: JSON read back from PostgreSQL. jsonb writes a number as its exact
 * decimal digits, so a double jansson parsed on the way in (1e300) comes
 * back as a 301-digit integer that jansson refuses ("too big integer"):
 * such integers are read as the doubles they were, every other value as
 * usual. */
#ifndef SL_DB_PGJSON_H
#define SL_DB_PGJSON_H

#include <jansson.h>
#include <libpq-fe.h>

/* Any JSON value; NULL when text is not JSON. */
json_t *pg_json_parse(const char *text);
/* A column's value as JSON; NULL for SQL NULL or text that is not JSON. */
json_t *pg_json(const PGresult *r, int row, int col);

#endif
