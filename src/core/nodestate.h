/* nodestate.h: NS(x), the short spelling of a member state of the wire protocol
 * (proto/spes.proto's NodeState): NS(ACTIVE) is SPES__WIRE__NODE_STATE__NODE_STATE_ACTIVE.
 * The macro names the generated constant; the file using it includes the generated header. */
#ifndef SPES_CORE_NODESTATE_H
#define SPES_CORE_NODESTATE_H

#define NS(x) SPES__WIRE__NODE_STATE__NODE_STATE_##x

#endif
