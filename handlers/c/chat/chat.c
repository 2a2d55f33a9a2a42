/* The Sluice chat handler in C: the same behaviour as the Rust reference
 * (handlers/chat/src/lib.rs), checked by tests/all/conformance.rs.
 *
 * Routes (every one needs a channel, the room): chat.join, chat.leave,
 * chat.send with data {"text": "..."}. History: the last 20 messages of a
 * room, in tenant state under `room:<channel>` as
 * {"next_seq": n, "history": [{"seq","from","text","at"}]}.
 * Rejections: channel_required, invalid_data, empty_text, text_too_long,
 * unknown_route.
 *
 * No stdio: the component then imports nothing from WASI at all.
 *
 * wit-bindgen C conventions: an export owns its arguments (freed here); what
 * it returns is freed by the generated post-return function, so every
 * string handed back is malloc'd; `false` plus `*err` is `err`. */
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "json.h"

#define HISTORY_LEN 20
#define MAX_TEXT_CHARS 500
#define MAX_TEXT_CHARS_TEXT "500"

typedef exports_sluice_handler_events_connection_t connection_t;
typedef exports_sluice_handler_events_message_t message_t;
typedef exports_sluice_handler_events_list_action_t action_list_t;
typedef exports_sluice_handler_events_handler_error_t handler_error_t;
typedef exports_sluice_handler_events_action_t action_t;

/* A malloc'd copy of n bytes as a WIT string. */
static chat_string_t owned(const char *s, size_t n) {
    chat_string_t out = {NULL, 0};
    if (n == 0) return out;
    out.ptr = malloc(n);
    if (!out.ptr) abort();
    memcpy(out.ptr, s, n);
    out.len = n;
    return out;
}

/* Take a buffer's bytes as a WIT string (the buffer is emptied). */
static chat_string_t take(json_buf *b) {
    if (b->failed) abort();
    chat_string_t out = {(uint8_t *)b->ptr, b->len};
    if (b->len == 0) {
        free(b->ptr);
        out.ptr = NULL;
    }
    b->ptr = NULL;
    b->len = b->cap = 0;
    return out;
}

static bool reject(handler_error_t *err, const char *code, const char *message) {
    err->tag = SLUICE_HANDLER_TYPES_HANDLER_ERROR_REJECT;
    err->val.reject.code = owned(code, strlen(code));
    err->val.reject.message = owned(message, strlen(message));
    return false;
}

static bool fail(handler_error_t *err, const char *detail) {
    err->tag = SLUICE_HANDLER_TYPES_HANDLER_ERROR_FAIL;
    err->val.fail = owned(detail, strlen(detail));
    return false;
}

static void push(action_list_t *list, action_t action) {
    action_t *p = realloc(list->ptr, (list->len + 1) * sizeof *p);
    if (!p) abort();
    list->ptr = p;
    p[list->len++] = action;
}

static void subscribe(action_list_t *list, int tag, const chat_string_t *channel) {
    action_t a = {.tag = (uint8_t)tag};
    a.val.subscribe = owned((const char *)channel->ptr, channel->len);
    push(list, a);
}

static void publish(action_list_t *list, const chat_string_t *channel, json_buf *data) {
    action_t a = {.tag = SLUICE_HANDLER_TYPES_ACTION_PUBLISH};
    a.val.publish.channel = owned((const char *)channel->ptr, channel->len);
    a.val.publish.data = take(data);
    push(list, a);
}

static void reply(action_list_t *list, json_buf *data) {
    action_t a = {.tag = SLUICE_HANDLER_TYPES_ACTION_REPLY};
    a.val.reply = take(data);
    push(list, a);
}

/* {"kind":<kind>,"from":<subject>} */
static void presence(json_buf *b, const char *kind, const chat_string_t *from) {
    buf_str(b, "{\"kind\":\"");
    buf_str(b, kind);
    buf_str(b, "\",\"from\":");
    buf_json_string(b, (const char *)from->ptr, from->len);
    buf_str(b, "}");
}

/* Decode one UTF-8 scalar value at s[*i] (the host hands valid UTF-8). */
static uint32_t next_char(const unsigned char *s, size_t n, size_t *i) {
    unsigned char c = s[(*i)++];
    int more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
    uint32_t cp = more == 3 ? c & 0x07 : more == 2 ? c & 0x0f : more == 1 ? c & 0x1f : c;
    while (more-- > 0 && *i < n) cp = (cp << 6) | (s[(*i)++] & 0x3f);
    return cp;
}

/* Rust's char::is_whitespace: the Unicode White_Space property. */
static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* The room stored under key, or an empty one; NULL when the stored value is
 * not a room. The caller frees it. */
static json_value *load_room(const chat_string_t *key) {
    chat_list_u8_t raw;
    chat_string_t k = *key;
    if (!sluice_handler_state_get(&k, &raw)) {
        return json_parse("{\"next_seq\":0,\"history\":[]}", 27);
    }
    json_value *room = json_parse((const char *)raw.ptr, raw.len);
    chat_list_u8_free(&raw);
    const json_value *seq = json_get(room, "next_seq");
    const json_value *history = json_get(room, "history");
    if (!seq || !seq->is_uint || !history || history->kind != JSON_ARRAY) {
        json_free(room);
        return NULL;
    }
    return room;
}

static bool chat_send(const chat_string_t *channel, const chat_string_t *key,
                      const chat_string_t *from, const chat_string_t *data,
                      action_list_t *ret, handler_error_t *err) {
    /* Mirrors serde's derive for `struct Send { text: String }`: an object
     * with a string `text` (other fields ignored), or an array holding
     * exactly that one string. */
    json_value *value = json_parse((const char *)data->ptr, data->len);
    const json_value *text = NULL;
    const char *problem = NULL;
    if (!value) {
        problem = "data does not fit: not JSON";
    } else if (value->kind == JSON_ARRAY) {
        if (value->count == 1 && value->items[0]->kind == JSON_STRING) text = value->items[0];
        else problem = "data does not fit: expected an array of one string";
    } else if (value->kind != JSON_OBJECT) {
        problem = "data does not fit: expected an object";
    } else if (!(text = json_get(value, "text"))) {
        problem = "data does not fit: missing field `text`";
    } else if (text->kind != JSON_STRING) {
        problem = "data does not fit: `text` must be a string";
    }
    if (problem) {
        json_free(value);
        return reject(err, "invalid_data", problem);
    }

    const unsigned char *s = (const unsigned char *)text->str;
    size_t chars = 0, i = 0;
    bool blank = true;
    while (i < text->str_len) {
        if (!is_white_space(next_char(s, text->str_len, &i))) blank = false;
        chars++;
    }
    if (blank) {
        json_free(value);
        return reject(err, "empty_text", "text must not be empty");
    }
    if (chars > MAX_TEXT_CHARS) {
        json_free(value);
        return reject(err, "text_too_long", "text must be at most " MAX_TEXT_CHARS_TEXT " characters");
    }

    json_value *room = load_room(key);
    if (!room) {
        json_free(value);
        return fail(err, "the state value of the room is not valid");
    }
    uint64_t seq = json_get(room, "next_seq")->uint + 1;
    uint64_t at = sluice_handler_clock_now_ms();
    const json_value *history = json_get(room, "history");

    /* The new line, written once, used in the room and in the event. */
    json_buf line = {0};
    buf_str(&line, "{\"seq\":");
    buf_uint(&line, seq);
    buf_str(&line, ",\"from\":");
    buf_json_string(&line, (const char *)from->ptr, from->len);
    buf_str(&line, ",\"text\":");
    buf_json_string(&line, text->str, text->str_len);
    buf_str(&line, ",\"at\":");
    buf_uint(&line, at);
    buf_str(&line, "}");

    json_buf stored = {0};
    buf_str(&stored, "{\"next_seq\":");
    buf_uint(&stored, seq);
    buf_str(&stored, ",\"history\":[");
    size_t keep = history->count + 1 > HISTORY_LEN ? HISTORY_LEN - 1 : history->count;
    for (size_t j = history->count - keep; j < history->count; j++) {
        buf_json_value(&stored, history->items[j]);
        buf_str(&stored, ",");
    }
    buf_raw(&stored, line.ptr, line.len);
    buf_str(&stored, "]}");
    if (stored.failed || line.failed) abort();
    json_free(room);

    chat_string_t k = *key;
    chat_list_u8_t bytes = {(uint8_t *)stored.ptr, stored.len};
    sluice_handler_state_state_error_t state_error;
    bool ok = sluice_handler_state_set(&k, &bytes, &state_error);
    free(stored.ptr);
    if (!ok) {
        free(line.ptr);
        json_free(value);
        json_buf detail = {0};
        buf_str(&detail, "state write refused: error ");
        buf_uint(&detail, state_error);
        if (detail.failed) abort();
        ok = fail(err, detail.ptr);
        free(detail.ptr);
        return ok;
    }

    /* {"kind":"message", + the line's fields */
    json_buf event = {0};
    buf_str(&event, "{\"kind\":\"message\",");
    buf_raw(&event, line.ptr + 1, line.len - 1);
    free(line.ptr);
    json_free(value);
    publish(ret, channel, &event);

    json_buf answer = {0};
    buf_str(&answer, "{\"seq\":");
    buf_uint(&answer, seq);
    buf_str(&answer, "}");
    reply(ret, &answer);
    return true;
}

static bool route_is(const chat_string_t *route, const char *name) {
    size_t n = strlen(name);
    return route->len == n && memcmp(route->ptr, name, n) == 0;
}

static bool on_message(connection_t *conn, message_t *msg, action_list_t *ret,
                       handler_error_t *err) {
    ret->ptr = NULL;
    ret->len = 0;
    if (!msg->channel.is_some) {
        return reject(err, "channel_required", "chat routes need a channel");
    }
    const chat_string_t *channel = &msg->channel.val;
    const chat_string_t *from = &conn->principal.subject;

    json_buf key_buf = {0};
    buf_str(&key_buf, "room:");
    buf_raw(&key_buf, (const char *)channel->ptr, channel->len);
    if (key_buf.failed) abort();
    chat_string_t key = {(uint8_t *)key_buf.ptr, key_buf.len};

    bool ok = true;
    if (route_is(&msg->route, "chat.join")) {
        json_value *room = load_room(&key);
        if (!room) {
            ok = fail(err, "the state value of the room is not valid");
        } else {
            subscribe(ret, SLUICE_HANDLER_TYPES_ACTION_SUBSCRIBE, channel);
            json_buf event = {0};
            presence(&event, "joined", from);
            publish(ret, channel, &event);
            json_buf answer = {0};
            buf_str(&answer, "{\"history\":");
            buf_json_value(&answer, json_get(room, "history"));
            buf_str(&answer, "}");
            reply(ret, &answer);
            json_free(room);
        }
    } else if (route_is(&msg->route, "chat.leave")) {
        subscribe(ret, SLUICE_HANDLER_TYPES_ACTION_UNSUBSCRIBE, channel);
        json_buf event = {0};
        presence(&event, "left", from);
        publish(ret, channel, &event);
        json_buf answer = {0};
        buf_str(&answer, "{}");
        reply(ret, &answer);
    } else if (route_is(&msg->route, "chat.send")) {
        ok = chat_send(channel, &key, from, &msg->data, ret, err);
    } else {
        json_buf message = {0};
        buf_str(&message, "chat has no route ");
        buf_json_string(&message, (const char *)msg->route.ptr, msg->route.len);
        if (message.failed) abort();
        ok = reject(err, "unknown_route", message.ptr);
        free(message.ptr);
    }
    free(key_buf.ptr);
    if (!ok) exports_sluice_handler_events_list_action_free(ret);
    return ok;
}

bool exports_sluice_handler_events_on_connect(connection_t *conn, action_list_t *ret,
                                              handler_error_t *err) {
    exports_sluice_handler_events_connection_free(conn);
    ret->ptr = NULL;
    ret->len = 0;
    return true;
}

bool exports_sluice_handler_events_on_message(connection_t *conn, message_t *msg,
                                              action_list_t *ret, handler_error_t *err) {
    bool ok = on_message(conn, msg, ret, err);
    exports_sluice_handler_events_connection_free(conn);
    exports_sluice_handler_events_message_free(msg);
    return ok;
}

bool exports_sluice_handler_events_on_disconnect(connection_t *conn, action_list_t *ret,
                                                 handler_error_t *err) {
    exports_sluice_handler_events_connection_free(conn);
    ret->ptr = NULL;
    ret->len = 0;
    return true;
}
