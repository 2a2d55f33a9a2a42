/* Test-only hostile handler in C (the tests' counterpart of
 * handlers/misbehave, for the limits every language must respect).
 * Driven by data {"mode": "..."}, matched as text:
 *   ok     replies {"ok":true}
 *   spin   loops forever (fuel / deadline must stop it)
 *   alloc  keeps allocating 1 MiB blocks (the memory cap must stop it) */
#include <stdlib.h>
#include <string.h>

#include "misbehave.h"

typedef exports_sluice_handler_events_connection_t connection_t;
typedef exports_sluice_handler_events_message_t message_t;
typedef exports_sluice_handler_events_list_action_t action_list_t;
typedef exports_sluice_handler_events_handler_error_t handler_error_t;

static bool is_mode(const message_t *msg, const char *mode) {
    char want[64];
    size_t n = strlen("{\"mode\":\"") + strlen(mode) + 2;
    if (n >= sizeof want || msg->data.len != n) return false;
    strcpy(want, "{\"mode\":\"");
    strcat(want, mode);
    strcat(want, "\"}");
    return memcmp(msg->data.ptr, want, n) == 0;
}

static misbehave_string_t owned(const char *s) {
    misbehave_string_t out;
    out.len = strlen(s);
    out.ptr = malloc(out.len);
    if (!out.ptr) abort();
    memcpy(out.ptr, s, out.len);
    return out;
}

bool exports_sluice_handler_events_on_message(connection_t *conn, message_t *msg,
                                              action_list_t *ret, handler_error_t *err) {
    bool ok = true;
    ret->ptr = NULL;
    ret->len = 0;
    if (is_mode(msg, "ok")) {
        ret->ptr = malloc(sizeof *ret->ptr);
        if (!ret->ptr) abort();
        ret->len = 1;
        ret->ptr[0].tag = SLUICE_HANDLER_TYPES_ACTION_REPLY;
        ret->ptr[0].val.reply = owned("{\"ok\":true}");
    } else if (is_mode(msg, "spin")) {
        volatile unsigned n = 0;
        for (;;) n = n + 1;
    } else if (is_mode(msg, "alloc")) {
        for (;;) {
            volatile char *block = malloc(1 << 20);
            if (!block) abort();  /* growth refused by the host */
            block[0] = 7;
        }
    } else {
        err->tag = SLUICE_HANDLER_TYPES_HANDLER_ERROR_REJECT;
        err->val.reject.code = owned("unknown_mode");
        err->val.reject.message = owned("no such mode");
        ok = false;
    }
    exports_sluice_handler_events_connection_free(conn);
    exports_sluice_handler_events_message_free(msg);
    return ok;
}

bool exports_sluice_handler_events_on_connect(connection_t *conn, action_list_t *ret,
                                              handler_error_t *err) {
    exports_sluice_handler_events_connection_free(conn);
    ret->ptr = NULL;
    ret->len = 0;
    return true;
}

bool exports_sluice_handler_events_on_disconnect(connection_t *conn, action_list_t *ret,
                                                 handler_error_t *err) {
    exports_sluice_handler_events_connection_free(conn);
    ret->ptr = NULL;
    ret->len = 0;
    return true;
}
