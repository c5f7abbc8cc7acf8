/* wordcount: the example module of docs/modules.md, in C.
 *
 * Counts the lines, words and bytes of the job input's "text", writes them
 * to counts.json (an output artifact) and answers with them. A text with
 * fewer words than params.min_words gets a warning.
 *
 * Build: cc -O2 -I contrib/sdk/c contrib/modules/wordcount.c -o wordcount -lmsgpackc */
#define STAGELINE_MODULE_IMPLEMENTATION
#include "stageline_module.h"

#include <ctype.h>
#include <stdio.h>

static void wordcount(struct sl_task *t, void *arg)
{
	const msgpack_object *input = sl_input_json(t, "input.json");
	const msgpack_object *text = sl_get(input, "text");
	long long lines = 0, words = 0;
	bool in_word = false;
	char counts[128], path[4096];
	FILE *f;

	(void)arg;
	if (text == NULL || text->type != MSGPACK_OBJECT_STR) {
		sl_error(t, "the job input needs a string 'text'", "NO_TEXT", "input",
		         SL_RETRY_DEFAULT);
		return;
	}
	for (uint32_t i = 0; i < text->via.str.size; i++) {
		int c = (unsigned char)text->via.str.ptr[i];
		if (c == '\n' && ++lines % 1000 == 0) {
			sl_progress(t, (double)i / text->via.str.size, NULL);
			if (sl_cancelled(t)) {
				sl_error(t, "cancelled", "CANCELLED", "cancelled",
				         SL_RETRY_DEFAULT);
				return;
			}
		}
		if (isspace(c)) {
			in_word = false;
		} else if (!in_word) {
			in_word = true;
			words++;
		}
	}
	snprintf(counts, sizeof counts, "{\"lines\": %lld, \"words\": %lld, \"bytes\": %lu}", lines,
	         words, (unsigned long)text->via.str.size);
	snprintf(path, sizeof path, "%s/counts.json", t->workdir);
	if ((f = fopen(path, "w")) == NULL || fputs(counts, f) < 0 || fclose(f) != 0) {
		sl_error(t, "writing counts.json failed", "WRITE_FAILED", "infra",
		         SL_RETRY_DEFAULT);
		return;
	}
	sl_artifact(t, "counts", "counts.json", "metadata", "json", "output");
	sl_logf(t, "info", "counted %lld words", words);
	if (words < sl_param_int(t, "min_words", 0))
		sl_warning(t, "fewer words than expected", NULL);
	sl_result_json(t, counts);
}

int main(void)
{
	struct sl_module_config cfg = {.name = "wordcount", .version = "1.0"};

	if (sl_module_hello(&cfg) != 0)
		return 1;
	return sl_module_run(wordcount, NULL);
}
