/* fsutil: small filesystem helpers shared by the store and the scheduler. */
#ifndef SL_CORE_FSUTIL_H
#define SL_CORE_FSUTIL_H

#include <stdbool.h>
#include <sys/types.h>

/* mkdir -p: creates every missing directory of path (absolute or relative)
 * with mode. True when path is a directory afterwards; errno says why not. */
bool mkdir_p(const char *path, mode_t mode);

#endif
