/* POST /quote {"user_id": 1, "amount_cents": 2000} — a price quote, written in C.
 *
 * Reads the user's plan through the flux.db_query import (pro users get 20% off), stamps the
 * quote with flux.now (valid 15 minutes) and numbers it with flux.random — each one recorded
 * on the execution's tape, so `flux replay` gives this function the same plan, clock and
 * number as the original run. Built to examples/shop/functions/quote.wasm by build.py
 * (zig's C compiler, from the ziglang wheel): freestanding, no libc, no WASI.
 *
 * The ABI (docs/wasm-abi.md): export memory, alloc(len) -> ptr, handle(ptr, len) -> i64
 * (ptr << 32 | len); JSON in, JSON out.
 */

#include <stdint.h>

#define FLUX_IMPORT(name) __attribute__((import_module("flux"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

FLUX_IMPORT("db_query") uint64_t flux_db_query(const char *json, uint32_t len);
FLUX_IMPORT("now") int64_t flux_now(void);
FLUX_IMPORT("random") double flux_random(void);
FLUX_IMPORT("log") void flux_log(const char *json, uint32_t len);
FLUX_IMPORT("error") void flux_error(const char *json, uint32_t len);

#define VALID_FOR_MS (15 * 60 * 1000)
#define PRO_DISCOUNT_PERCENT 20

/* -- memory: a bump allocator over the heap the linker leaves after the data ----------- */

extern unsigned char __heap_base;
static uintptr_t heap_top = 0;

EXPORT("alloc") void *alloc(uint32_t len) {
    if (heap_top == 0) heap_top = (uintptr_t)&__heap_base;
    uintptr_t start = (heap_top + 7) & ~(uintptr_t)7;
    uintptr_t end = start + len;
    uintptr_t size = __builtin_wasm_memory_size(0) * 65536;
    if (end > size) {
        uintptr_t pages = (end - size + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, pages) == (uintptr_t)-1) return 0;
    }
    heap_top = end;
    return (void *)start;
}

static uint64_t pack(const char *ptr, uint32_t len) {
    return ((uint64_t)(uintptr_t)ptr << 32) | len;
}

/* -- a string builder ------------------------------------------------------------------- */

typedef struct { char *data; uint32_t len, cap; } buf;

static buf buf_new(uint32_t cap) { buf b = { alloc(cap), 0, cap }; return b; }

static void put(buf *b, const char *s, uint32_t n) {
    if (b->len + n > b->cap) __builtin_trap();  /* sized generously by the caller */
    for (uint32_t i = 0; i < n; i++) b->data[b->len + i] = s[i];
    b->len += n;
}

static uint32_t slen(const char *s) { uint32_t n = 0; while (s[n]) n++; return n; }
static void puts_(buf *b, const char *s) { put(b, s, slen(s)); }

static void put_int(buf *b, int64_t v) {
    char digits[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)(-v) : (uint64_t)v;
    do { digits[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) put(b, "-", 1);
    while (n) put(b, &digits[--n], 1);
}

/* -- just enough JSON: find "key": and read the number or string after it -------------- */

static int find_key(const char *json, uint32_t len, const char *key, uint32_t *at) {
    uint32_t k = slen(key);
    for (uint32_t i = 0; i + k + 2 <= len; i++) {
        if (json[i] != '"' || json[i + k + 1] != '"') continue;
        uint32_t j = 0;
        while (j < k && json[i + 1 + j] == key[j]) j++;
        if (j < k) continue;
        uint32_t p = i + k + 2;
        while (p < len && (json[p] == ' ' || json[p] == ':')) p++;
        *at = p;
        return 1;
    }
    return 0;
}

static int json_int(const char *json, uint32_t len, const char *key, int64_t *out) {
    uint32_t p;
    if (!find_key(json, len, key, &p) || p >= len || json[p] < '0' || json[p] > '9') return 0;
    int64_t v = 0;
    while (p < len && json[p] >= '0' && json[p] <= '9') v = v * 10 + (json[p++] - '0');
    *out = v;
    return 1;
}

static int json_str(const char *json, uint32_t len, const char *key, const char **s, uint32_t *n) {
    uint32_t p;
    if (!find_key(json, len, key, &p) || p >= len || json[p] != '"') return 0;
    uint32_t q = p + 1;
    while (q < len && json[q] != '"') q++;
    *s = json + p + 1;
    *n = q - p - 1;
    return 1;
}

static void fail(const char *json) { flux_error(json, slen(json)); __builtin_trap(); }

/* -- the function ------------------------------------------------------------------------ */

EXPORT("handle") uint64_t handle(const char *input, uint32_t len) {
    int64_t user_id, amount;
    if (!json_int(input, len, "user_id", &user_id) || user_id <= 0)
        fail("{\"status\":400,\"code\":\"invalid_user_id\","
             "\"message\":\"user_id must be a positive integer\"}");
    if (!json_int(input, len, "amount_cents", &amount) || amount <= 0)
        fail("{\"status\":400,\"code\":\"invalid_amount_cents\","
             "\"message\":\"amount_cents must be a positive integer\"}");

    buf q = buf_new(256);
    puts_(&q, "{\"mode\":\"one\",\"sql\":\"SELECT plan FROM users WHERE id = %s\",\"params\":[");
    put_int(&q, user_id);
    puts_(&q, "]}");
    uint64_t row = flux_db_query(q.data, q.len);
    const char *r = (const char *)(uintptr_t)(row >> 32);
    uint32_t rlen = (uint32_t)row;
    const char *plan;
    uint32_t plan_len;
    if (!json_str(r, rlen, "plan", &plan, &plan_len))
        fail("{\"status\":404,\"code\":\"user_not_found\",\"message\":\"no user with that user_id\"}");

    int pro = plan_len == 3 && plan[0] == 'p' && plan[1] == 'r' && plan[2] == 'o';
    int64_t quote = pro ? amount - amount * PRO_DISCOUNT_PERCENT / 100 : amount;
    int64_t valid_until = flux_now() + VALID_FOR_MS;
    int64_t number = (int64_t)(flux_random() * 1000000000.0);

    buf out = buf_new(512);
    puts_(&out, "{\"user_id\":");
    put_int(&out, user_id);
    puts_(&out, ",\"plan\":\"");
    put(&out, plan, plan_len);
    puts_(&out, "\",\"amount_cents\":");
    put_int(&out, amount);
    puts_(&out, ",\"quote_cents\":");
    put_int(&out, quote);
    puts_(&out, ",\"valid_until_ms\":");
    put_int(&out, valid_until);
    puts_(&out, ",\"quote_id\":\"q-");
    put_int(&out, number);
    puts_(&out, "\"}");

    buf line = buf_new(128);
    puts_(&line, "{\"level\":\"info\",\"message\":\"quoted\",\"quote_cents\":");
    put_int(&line, quote);
    puts_(&line, "}");
    flux_log(line.data, line.len);
    return pack(out.data, out.len);
}
