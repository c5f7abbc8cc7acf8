/* fsutil (fsutil.h). */
#include "core/fsutil.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "core/xmalloc.h"

bool mkdir_p(const char *path, mode_t mode)
{
	char *p = xstrdup(path);
	bool ok = true;
	for (char *s = p + 1; ok; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST)
			ok = false;
		*s = c;
		if (c == '\0')
			break;
	}
	free(p);
	struct stat st;
	return ok && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
