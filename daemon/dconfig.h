/* dconfig.h: the daemon config, kept here for the daemon's includes; it lives in config/dconfig.h. */
#ifndef SPES_DAEMON_DCONFIG_H
#define SPES_DAEMON_DCONFIG_H

#include "config/dconfig.h"

#endif
