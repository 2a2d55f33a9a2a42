/* See json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct {
    const char *p;
    const char *end;
} reader;

static json_value *new_value(json_kind kind) {
    json_value *v = calloc(1, sizeof *v);
    if (v) v->kind = kind;
    return v;
}

void json_free(json_value *v) {
    if (!v) return;
    for (size_t i = 0; i < v->count; i++) {
        json_free(v->items[i]);
        if (v->keys) json_free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

static void skip_ws(reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static bool literal(reader *r, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0) return false;
    r->p += n;
    return true;
}

static int hex4(reader *r) {
    if (r->end - r->p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = r->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    r->p += 4;
    return v;
}

static void put_utf8(char *out, size_t *n, uint32_t cp) {
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xc0 | (cp >> 6));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xe0 | (cp >> 12));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*n)++] = (char)(0xf0 | (cp >> 18));
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static json_value *parse_string(reader *r) {
    if (r->p >= r->end || *r->p != '"') return NULL;
    r->p++;
    /* Decoded text is never longer than the escaped text. */
    const char *q = r->p;
    while (q < r->end && *q != '"') q += (*q == '\\') ? 2 : 1;
    if (q >= r->end) return NULL;
    char *out = malloc((size_t)(q - r->p) + 1);
    if (!out) return NULL;
    size_t n = 0;
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) goto bad;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (r->p >= r->end) goto bad;
        char e = *r->p++;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            int hi = hex4(r);
            if (hi < 0) goto bad;
            uint32_t cp = (uint32_t)hi;
            if (hi >= 0xd800 && hi <= 0xdbff) {
                if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u') goto bad;
                r->p += 2;
                int lo = hex4(r);
                if (lo < 0xdc00 || lo > 0xdfff) goto bad;
                cp = 0x10000 + (((uint32_t)hi - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
            } else if (hi >= 0xdc00 && hi <= 0xdfff) {
                goto bad;
            }
            put_utf8(out, &n, cp);
            break;
        }
        default: goto bad;
        }
    }
    if (r->p >= r->end) goto bad;
    r->p++; /* closing quote */
    json_value *v = new_value(JSON_STRING);
    if (!v) goto bad;
    out[n] = 0;
    v->str = out;
    v->str_len = n;
    return v;
bad:
    free(out);
    return NULL;
}

static json_value *parse_number(reader *r) {
    const char *start = r->p;
    bool negative = false, integer = true, overflow = false;
    uint64_t u = 0;
    if (r->p < r->end && *r->p == '-') { negative = true; r->p++; }
    if (r->p >= r->end || *r->p < '0' || *r->p > '9') return NULL;
    if (*r->p == '0') {
        r->p++;
    } else {
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
            uint64_t d = (uint64_t)(*r->p++ - '0');
            if (u > (UINT64_MAX - d) / 10) overflow = true;
            else u = u * 10 + d;
        }
    }
    if (r->p < r->end && *r->p == '.') {
        integer = false;
        r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return NULL;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        integer = false;
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return NULL;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    }
    json_value *v = new_value(JSON_NUMBER);
    if (!v) return NULL;
    v->is_uint = integer && !negative && !overflow;
    v->uint = u;
    /* Keep the text, to write the number back unchanged. */
    size_t n = (size_t)(r->p - start);
    v->str = malloc(n + 1);
    if (!v->str) { free(v); return NULL; }
    memcpy(v->str, start, n);
    v->str[n] = 0;
    v->str_len = n;
    return v;
}

static bool push(json_value *parent, json_value *key, json_value *item) {
    json_value **items = realloc(parent->items, (parent->count + 1) * sizeof *items);
    if (!items) return false;
    parent->items = items;
    if (parent->kind == JSON_OBJECT) {
        json_value **keys = realloc(parent->keys, (parent->count + 1) * sizeof *keys);
        if (!keys) return false;
        parent->keys = keys;
        keys[parent->count] = key;
    }
    items[parent->count++] = item;
    return true;
}

static json_value *parse_value(reader *r, int depth);

static json_value *parse_container(reader *r, int depth, bool object) {
    char close = object ? '}' : ']';
    r->p++;
    json_value *v = new_value(object ? JSON_OBJECT : JSON_ARRAY);
    if (!v) return NULL;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) { r->p++; return v; }
    for (;;) {
        json_value *key = NULL;
        skip_ws(r);
        if (object) {
            key = parse_string(r);
            if (!key) goto bad;
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':') { json_free(key); goto bad; }
            r->p++;
        }
        json_value *item = parse_value(r, depth + 1);
        if (!item || !push(v, key, item)) { json_free(key); json_free(item); goto bad; }
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == close) { r->p++; return v; }
        goto bad;
    }
bad:
    json_free(v);
    return NULL;
}

static json_value *parse_value(reader *r, int depth) {
    if (depth > MAX_DEPTH) return NULL;
    skip_ws(r);
    if (r->p >= r->end) return NULL;
    switch (*r->p) {
    case '{': return parse_container(r, depth, true);
    case '[': return parse_container(r, depth, false);
    case '"': return parse_string(r);
    case 't':
    case 'f': {
        bool b = *r->p == 't';
        if (!literal(r, b ? "true" : "false")) return NULL;
        json_value *v = new_value(JSON_BOOL);
        if (v) v->boolean = b;
        return v;
    }
    case 'n':
        if (!literal(r, "null")) return NULL;
        return new_value(JSON_NULL);
    default: return parse_number(r);
    }
}

json_value *json_parse(const char *text, size_t len) {
    reader r = {text, text + len};
    json_value *v = parse_value(&r, 0);
    skip_ws(&r);
    if (v && r.p != r.end) { json_free(v); return NULL; }
    return v;
}

const json_value *json_get(const json_value *object, const char *key) {
    if (!object || object->kind != JSON_OBJECT) return NULL;
    size_t n = strlen(key);
    const json_value *found = NULL;
    for (size_t i = 0; i < object->count; i++) {
        const json_value *k = object->keys[i];
        if (k->str_len == n && memcmp(k->str, key, n) == 0) found = object->items[i];
    }
    return found;
}

void buf_raw(json_buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p) { b->failed = true; return; }
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
    b->ptr[b->len] = 0;
}

void buf_str(json_buf *b, const char *s) { buf_raw(b, s, strlen(s)); }

void buf_uint(json_buf *b, uint64_t n) {
    char tmp[21];
    size_t i = sizeof tmp;
    do { tmp[--i] = (char)('0' + n % 10); n /= 10; } while (n);
    buf_raw(b, tmp + i, sizeof tmp - i);
}

void buf_json_string(json_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    buf_raw(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
            }
        }
        if (!esc && c >= 0x20) continue;
        buf_raw(b, s + run, i - run);
        if (esc) buf_str(b, esc);
        else buf_raw(b, u, 6);
        run = i + 1;
    }
    buf_raw(b, s + run, n - run);
    buf_raw(b, "\"", 1);
}

void buf_json_value(json_buf *b, const json_value *v) {
    switch (v->kind) {
    case JSON_NULL: buf_str(b, "null"); break;
    case JSON_BOOL: buf_str(b, v->boolean ? "true" : "false"); break;
    case JSON_NUMBER: buf_raw(b, v->str, v->str_len); break;
    case JSON_STRING: buf_json_string(b, v->str, v->str_len); break;
    case JSON_ARRAY:
    case JSON_OBJECT: {
        bool object = v->kind == JSON_OBJECT;
        buf_raw(b, object ? "{" : "[", 1);
        for (size_t i = 0; i < v->count; i++) {
            if (i) buf_raw(b, ",", 1);
            if (object) {
                buf_json_string(b, v->keys[i]->str, v->keys[i]->str_len);
                buf_raw(b, ":", 1);
            }
            buf_json_value(b, v->items[i]);
        }
        buf_raw(b, object ? "}" : "]", 1);
        break;
    }
    }
}
