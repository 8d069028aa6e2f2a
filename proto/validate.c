/* validate.c: semantic limits on decoded (and to-be-encoded) control messages.
 * protobuf-c checks wire syntax only; this walks the message tree through its
 * descriptors and refuses unknown fields, unknown enum values, hashes that are
 * not exactly 32 bytes, oversized strings/lists, invalid UTF-8 and a few
 * per-message rules. Must never trust a count or length it has not checked,
 * and never abort on peer input. */
#include "proto/proto.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"

#define HASH_LEN 32

int spes_proto_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned min, cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 2, min = 0x80, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 3, min = 0x800, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 4, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i < n)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n;
    }
    return 1;
}

/* String classes, chosen by field name so that new fields get a sane default. */
typedef struct string_rule {
    const char *field;
    size_t max;
    int name_like; /* no control characters */
} string_rule;

static const string_rule string_rules[] = {
    {"name", SPES_PROTO_MAX_NAME, 1},
    {"node_name", SPES_PROTO_MAX_NAME, 1},
    {"id", SPES_PROTO_MAX_NAME, 1},
    {"target", SPES_PROTO_MAX_NAME, 1},
    {"run_id", SPES_PROTO_MAX_NAME, 1},
    {"software_version", SPES_PROTO_MAX_NAME, 1},
    {"listen_url", SPES_PROTO_MAX_URL, 1},
    {"coordinator", SPES_PROTO_MAX_URL, 1},
    {"out_dir", SPES_PROTO_MAX_PATH, 1},
    {"run_config_json", SPES_PROTO_MAX_CONFIG, 0},
    {"checkpoint_id", SPES_PROTO_MAX_NAME, 1},
};

static const string_rule *string_rule_for(const char *field)
{
    static const string_rule deflt = {NULL, SPES_PROTO_MAX_TEXT, 0};
    for (size_t i = 0; i < sizeof string_rules / sizeof string_rules[0]; i++)
        if (strcmp(string_rules[i].field, field) == 0)
            return &string_rules[i];
    return &deflt;
}

static int is_hash_field(const char *field)
{
    size_t n = strlen(field);
    return strcmp(field, "digest") == 0 || (n >= 4 && strcmp(field + n - 4, "hash") == 0);
}

/* Hash fields that may also be empty ("not known yet"). */
static int hash_may_be_empty(const ProtobufCMessageDescriptor *d, const char *field)
{
    return (d == &spes__wire__member_info__descriptor && strcmp(field, "digest") == 0) ||
           (d == &spes__wire__last_round__descriptor && strcmp(field, "digest") == 0) ||
           (d == &spes__wire__checkpoint_info__descriptor && strcmp(field, "state_hash") == 0);
}

static int check_string(const char *path, const ProtobufCFieldDescriptor *f, const char *s)
{
    if (s == NULL)
        return spes_errf(SPES_EFORMAT, "%s.%s: missing string", path, f->name);
    const string_rule *r = string_rule_for(f->name);
    size_t n = strnlen(s, r->max + 1);
    if (n > r->max)
        return spes_errf(SPES_ERANGE, "%s.%s: string longer than %zu bytes", path, f->name, r->max);
    if (!spes_proto_utf8_valid(s, n))
        return spes_errf(SPES_EFORMAT, "%s.%s: string is not valid UTF-8", path, f->name);
    for (size_t i = 0; r->name_like && i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return spes_errf(SPES_EFORMAT, "%s.%s: control character 0x%02x in a name", path, f->name,
                             (unsigned char)s[i]);
    return 0;
}

static int check_bytes(const char *path, const ProtobufCMessageDescriptor *d,
                       const ProtobufCFieldDescriptor *f, const ProtobufCBinaryData *b)
{
    if (b->len > 0 && b->data == NULL)
        return spes_errf(SPES_EFORMAT, "%s.%s: missing bytes", path, f->name);
    if (is_hash_field(f->name)) {
        if (b->len == HASH_LEN || (b->len == 0 && hash_may_be_empty(d, f->name)))
            return 0;
        return spes_errf(SPES_EFORMAT, "%s.%s: hash is %zu bytes, expected %d", path, f->name, b->len,
                         HASH_LEN);
    }
    size_t max = SPES_PROTO_MAX_TEXT;
    if (strcmp(f->name, "chunk_bitmap") == 0)
        max = SPES_PROTO_MAX_CHUNKS / 8;
    else if (d == &spes__wire__blob_piece__descriptor && strcmp(f->name, "data") == 0)
        max = SPES_PROTO_PUSH_PIECE;
    else if (d == &spes__wire__blob_push__descriptor && strcmp(f->name, "manifest") == 0)
        max = SPES_PROTO_PUSH_LIMIT - 16; /* the envelope's limit bounds it first */
    if (b->len > max)
        return spes_errf(SPES_ERANGE, "%s.%s: %zu bytes exceeds the %zu-byte limit", path, f->name, b->len,
                         max);
    return 0;
}

static int check_msg(const char *path, const ProtobufCMessage *m);

/* check_value checks element i of field f (i = 0 for a singular field). */
static int check_value(const char *path, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                       const void *p, size_t i)
{
    char sub[256];
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: return check_string(path, f, ((char *const *)p)[i]);
    case PROTOBUF_C_TYPE_BYTES:
        return check_bytes(path, m->descriptor, f, &((const ProtobufCBinaryData *)p)[i]);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = ((const int *)p)[i];
        if (protobuf_c_enum_descriptor_get_value(f->descriptor, v) == NULL)
            return spes_errf(SPES_EFORMAT, "%s.%s: unknown enum value %d", path, f->name, v);
        return 0;
    }
    case PROTOBUF_C_TYPE_UINT32: {
        uint32_t v = ((const uint32_t *)p)[i];
        if (strcmp(f->name, "columns") == 0 && v >= SPES_PROTO_MAX_COLUMNS)
            return spes_errf(SPES_ERANGE, "%s.%s: column %u out of range (limit %d)", path, f->name, v,
                             SPES_PROTO_MAX_COLUMNS);
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *child = ((const ProtobufCMessage *const *)p)[i];
        if (child == NULL)
            return f->label == PROTOBUF_C_LABEL_REPEATED
                       ? spes_errf(SPES_EFORMAT, "%s.%s[%zu]: missing message", path, f->name, i)
                       : 0;
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            snprintf(sub, sizeof sub, "%s.%s[%zu]", path, f->name, i);
        else
            snprintf(sub, sizeof sub, "%s.%s", path, f->name);
        return check_msg(sub, child);
    }
    default: return 0;
    }
}

static int check_field(const char *path, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)m;
    size_t n = 1;
    const void *p = base + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        n = *(const size_t *)(base + f->quantifier_offset);
        if (n > SPES_PROTO_MAX_ITEMS)
            return spes_errf(SPES_ERANGE, "%s.%s: %zu items exceeds the limit of %d", path, f->name, n,
                             SPES_PROTO_MAX_ITEMS);
        p = *(const void *const *)p;
        if (n > 0 && p == NULL)
            return spes_errf(SPES_EFORMAT, "%s.%s: missing items", path, f->name);
    } else if (f->label != PROTOBUF_C_LABEL_NONE) {
        /* proto2-style optional/required would need presence bits; spes.proto is proto3. */
        return spes_errf(SPES_EINVAL, "%s.%s: unexpected field label", path, f->name);
    }
    for (size_t i = 0; i < n; i++) {
        int rc = check_value(path, m, f, p, i);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* check_counters refuses seconds that are negative, not finite or absurd (a
 * NodeCounters wherever it is nested). */
static int check_counters(const char *path, const Spes__Wire__NodeCounters *c)
{
    if (!(c->train_s >= 0 && c->train_s <= 1e12) || !(c->wait_s >= 0 && c->wait_s <= 1e12))
        return spes_errf(SPES_ERANGE, "%s: seconds out of range (train %g, wait %g)", path, c->train_s,
                         c->wait_s);
    return 0;
}

static int check_msg(const char *path, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (m->n_unknown_fields > 0)
        return spes_errf(SPES_EFORMAT, "%s: unknown field %u (wire type %d); this node speaks protocol %d",
                         path, m->unknown_fields[0].tag, (int)m->unknown_fields[0].wire_type,
                         SPES_PROTO_VERSION);
    for (unsigned i = 0; i < d->n_fields; i++) {
        int rc = check_field(path, m, &d->fields[i]);
        if (rc < 0)
            return rc;
    }
    if (d == &spes__wire__node_counters__descriptor)
        return check_counters(path, (const Spes__Wire__NodeCounters *)m);
    return 0;
}

/* read_varint reads a protobuf varint at *pos; 0 when malformed. */
static int read_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *pos < len; shift += 7) {
        uint8_t b = p[(*pos)++];
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 1;
    }
    return 0;
}

/* scan_strings walks the raw payload once more, because protobuf-c keeps
 * strings NUL-terminated and would silently cut "node-1\0x" to "node-1":
 * a NUL inside any string field is refused. Only called on bytes protobuf-c
 * has already parsed; depth is bounded by the schema (it has no cycles). */
static int scan_strings(const char *path, const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                        int depth)
{
    size_t pos = 0;
    uint64_t key, n;
    if (depth > 8)
        return spes_errf(SPES_EFORMAT, "%s: messages nested too deeply", path);
    while (pos < len) {
        if (!read_varint(p, len, &pos, &key))
            return spes_errf(SPES_EFORMAT, "%s: malformed field key", path);
        switch (key & 7) {
        case 0:
            if (!read_varint(p, len, &pos, &n))
                return spes_errf(SPES_EFORMAT, "%s: malformed varint", path);
            continue;
        case 1: n = 8; break;
        case 5: n = 4; break;
        case 2:
            if (!read_varint(p, len, &pos, &n))
                return spes_errf(SPES_EFORMAT, "%s: malformed length", path);
            break;
        default: return spes_errf(SPES_EFORMAT, "%s: unsupported wire type %d", path, (int)(key & 7));
        }
        if (n > len - pos)
            return spes_errf(SPES_EFORMAT, "%s: field runs past the payload", path);
        const ProtobufCFieldDescriptor *f =
            key >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3)) : NULL;
        if ((key & 7) == 2 && f != NULL) {
            if (f->type == PROTOBUF_C_TYPE_STRING && memchr(p + pos, 0, n) != NULL)
                return spes_errf(SPES_EFORMAT, "%s.%s: NUL byte inside a string", path, f->name);
            if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                char sub[256];
                snprintf(sub, sizeof sub, "%s.%s", path, f->name);
                int rc = scan_strings(sub, f->descriptor, p + pos, n, depth + 1);
                if (rc < 0)
                    return rc;
            }
        }
        pos += n;
    }
    return 0;
}

int spes__proto_scan_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len)
{
    return scan_strings(d->short_name, d, p, len, 0);
}

/* Per-message rules beyond field limits. */
static int check_rules(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (d == &spes__wire__join__descriptor) {
        const Spes__Wire__Join *j = (const Spes__Wire__Join *)m;
        if (j->node_name[0] == '\0')
            return spes_errf(SPES_EFORMAT, "Join.node_name: empty");
        if (j->protocol_version == 0)
            return spes_errf(SPES_EFORMAT, "Join.protocol_version: missing");
    } else if (d == &spes__wire__announce__descriptor) {
        const Spes__Wire__Announce *a = (const Spes__Wire__Announce *)m;
        if (a->codec == SPES__WIRE__CODEC__CODEC_UNSPECIFIED)
            return spes_errf(SPES_EFORMAT, "Announce.codec: missing");
    } else if (d == &spes__wire__members_request__descriptor) {
        const Spes__Wire__MembersRequest *r = (const Spes__Wire__MembersRequest *)m;
        if (r->action == SPES__WIRE__MEMBERS_ACTION__MEMBERS_ACTION_UNSPECIFIED)
            return spes_errf(SPES_EFORMAT, "MembersRequest.action: missing");
        if (r->action != SPES__WIRE__MEMBERS_ACTION__MEMBERS_LIST && r->target[0] == '\0')
            return spes_errf(SPES_EFORMAT, "MembersRequest.target: missing for this action");
    } else if (d == &spes__wire__checkpoint_request__descriptor) {
        const Spes__Wire__CheckpointRequest *r = (const Spes__Wire__CheckpointRequest *)m;
        if (r->action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_ACTION_UNSPECIFIED)
            return spes_errf(SPES_EFORMAT, "CheckpointRequest.action: missing");
        if ((r->action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_RESTORE ||
             r->action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT) &&
            r->id[0] == '\0')
            return spes_errf(SPES_EFORMAT, "CheckpointRequest.id: missing for this action");
        if (r->action == SPES__WIRE__CHECKPOINT_ACTION__CHECKPOINT_EXPORT && r->out_dir[0] == '\0')
            return spes_errf(SPES_EFORMAT, "CheckpointRequest.out_dir: missing for export");
    } else if (d == &spes__wire__chunk_request__descriptor) {
        const Spes__Wire__ChunkRequest *r = (const Spes__Wire__ChunkRequest *)m;
        if (r->chunk_count == 0 || r->chunk_count > SPES_PROTO_MAX_CHUNKS_PER_REQUEST)
            return spes_errf(SPES_ERANGE, "ChunkRequest.chunk_count: %u not in 1..%d", r->chunk_count,
                             SPES_PROTO_MAX_CHUNKS_PER_REQUEST);
        if ((uint64_t)r->first_chunk + r->chunk_count > SPES_PROTO_MAX_CHUNKS)
            return spes_errf(SPES_ERANGE, "ChunkRequest: chunks %u..%u beyond the %u-chunk limit",
                             r->first_chunk, r->first_chunk + r->chunk_count - 1, SPES_PROTO_MAX_CHUNKS);
    }
    return 0;
}

int spes_proto_validate(const ProtobufCMessage *msg)
{
    if (msg == NULL || msg->descriptor == NULL)
        return spes_errf(SPES_EINVAL, "validate: no message");
    int rc = check_msg(msg->descriptor->short_name, msg);
    return rc < 0 ? rc : check_rules(msg);
}
