/* A small JSON reader and writer for the Sluice chat handler in C.
 *
 * The reader parses into a tree allocated with malloc (json_free releases
 * it); strings are decoded to UTF-8 with their length (they may hold NUL).
 * Integers that fit a uint64_t are kept exactly. Depth is bounded.
 * The writer appends to a growable buffer and escapes strings as
 * serde_json does. */
#ifndef SLUICE_JSON_H
#define SLUICE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_kind;

typedef struct json_value json_value;

struct json_value {
    json_kind kind;
    bool boolean;
    /* JSON_NUMBER: is_uint when the number is a non-negative integer that
     * fits a uint64_t, held in uint. */
    bool is_uint;
    uint64_t uint;
    /* JSON_STRING: the decoded bytes (NUL-terminated too). */
    char *str;
    size_t str_len;
    /* JSON_ARRAY and JSON_OBJECT: items (for objects, keys[i] names
     * items[i]). */
    size_t count;
    json_value **items;
    json_value **keys;
};

/* Parse `len` bytes of JSON text. NULL when it is not valid JSON, is nested
 * deeper than 64, or memory ran out. */
json_value *json_parse(const char *text, size_t len);
void json_free(json_value *value);
/* The last member named `key` of an object (NULL when absent or not an
 * object). */
const json_value *json_get(const json_value *object, const char *key);

typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
    bool failed; /* out of memory */
} json_buf;

void buf_raw(json_buf *b, const char *s, size_t n);
void buf_str(json_buf *b, const char *s); /* raw, NUL-terminated */
void buf_uint(json_buf *b, uint64_t n);
void buf_json_string(json_buf *b, const char *s, size_t n); /* quoted, escaped */
/* Write `value` back as JSON (compact). */
void buf_json_value(json_buf *b, const json_value *value);

#endif
