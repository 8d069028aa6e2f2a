/* fuzz_node_replies.c: libFuzzer target for the node's state machine fed
 * outside bytes. The input is a script of steps: a step byte picks the input
 * (reply to the call in flight, a failed call, a tick, a finished job, a
 * stop); a reply's next byte picks its message type and two length bytes
 * (little-endian) its payload, framed with a valid header so that decoded messages reach the
 * handlers. The machine's own counters must never go negative. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "node/node.h"
#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_JOBS 16

static void drain(spes_node_sm *sm, spes_node_out *o, int *call, spes_node_job **jobs, int *njobs)
{
    spes_node_action a;
    while (spes_node_out_pop(o, &a)) {
        if (a.kind == SPES_NODE_ACT_SEND)
            *call = a.call;
        if (a.kind == SPES_NODE_ACT_JOB && *njobs < MAX_JOBS) {
            jobs[(*njobs)++] = a.job;
            a.job = NULL;
        }
        spes_node_action_fini(&a);
    }
    if (sm->busy < 0 || sm->calls < 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    spes_node_opts opts = {.name = "n",
                           .listen = "tcp://me:1",
                           .coordinator = "tcp://c:1",
                           .data = "",
                           .threads = 1,
                           .heartbeat_ms = 100,
                           .keep_blobs = 0};
    spes_node_sm sm;
    spes_node_out out;
    memset(&out, 0, sizeof out);
    if (spes_node_sm_init(&sm, &opts) != 0)
        abort();
    spes_node_job *jobs[MAX_JOBS];
    int njobs = 0, call = 0;
    uint64_t now = 1000;
    size_t i = 0;
    while (i < size) {
        uint8_t op = data[i++];
        switch (op % 6) {
        case 0: /* a reply to the call in flight: type, length, payload */
        case 1: {
            if (i + 3 > size)
                break;
            int type = data[i] % SPES_MSG_TYPE_END;
            size_t len = (size_t)data[i + 1] | (size_t)data[i + 2] << 8;
            i += 3;
            if (len > size - i)
                len = size - i;
            uint8_t *buf = malloc(SPES_PROTO_HEADER_LEN + len);
            if (!buf)
                break;
            spes_proto_header_write(buf, type, (uint32_t)len);
            memcpy(buf + SPES_PROTO_HEADER_LEN, data + i, len);
            i += len;
            spes_node_sm_reply(&sm, call ? call : 1 + op % 5, 0, NULL, buf, SPES_PROTO_HEADER_LEN + len, now,
                               &out);
            free(buf);
            break;
        }
        case 2: spes_node_sm_reply(&sm, call ? call : 1, SPES_ENET, "down", NULL, 0, now, &out); break;
        case 3: /* time passes */
            now += (uint64_t)(op >> 3) * 100;
            spes_node_sm_tick(&sm, now, &out);
            break;
        case 4: /* the oldest job finishes, failed when the op's high bit says so */
            if (njobs > 0) {
                spes_node_job *j = jobs[0];
                memmove(jobs, jobs + 1, (size_t)--njobs * sizeof *jobs);
                j->rc = op & 0x80 ? SPES_EIO : 0;
                spes_node_sm_job_done(&sm, j, now, &out);
            }
            break;
        default: spes_node_sm_stop(&sm, &out); break;
        }
        drain(&sm, &out, &call, jobs, &njobs);
    }
    for (int k = 0; k < njobs; k++)
        spes_node_job_free(jobs[k]);
    spes_node_out_fini(&out);
    spes_node_sm_fini(&sm);
    return 0;
}
