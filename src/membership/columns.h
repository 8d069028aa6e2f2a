/* columns.h: dealing expert columns to the nodes of a run (docs/design.md, "What a run computes"
 * and "Columns"). Every column has at least one owner; column loads of nodes
 * differ by at most one; with more nodes than columns every node owns one
 * column and columns have several owners. Re-dealing after a join or a leave
 * moves as few columns as it can, because a column's optimizer state lives on
 * its owner: orphaned columns go first to the least-loaded nodes, a joining
 * node takes orphaned columns first, else columns of the heaviest-loaded node.
 * Deterministic: ties go to the lower node index and the lower column. */
#ifndef SPES_MEMBERSHIP_COLUMNS_H
#define SPES_MEMBERSHIP_COLUMNS_H

#include <stdint.h>

/* spes_columns_rebalance turns the assignment own (n rows of E bytes, rows in
 * node-id order of the active nodes, 1 = owns) into one that meets the
 * invariants, in place, moving as little as possible. A new node is a row of
 * zeros; a departed node is simply not in the rows any more. */
void spes_columns_rebalance(uint8_t *own, int n, int E);

/* spes_columns_check returns 0 if own meets the invariants, else SPES_EINVAL with a message. */
int spes_columns_check(const uint8_t *own, int n, int E);

#endif
