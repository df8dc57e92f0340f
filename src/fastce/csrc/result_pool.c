#include "result_pool.h"

#include <pythread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Each block starts with its capacity; the array's data follows, 64 bytes
 * in, as aligned as the C library's own blocks. */
#define HEADER_BYTES 64
#define MAX_KEPT 8

typedef struct {
    void *base;
    size_t capacity;
} kept_block;

/* oldest first */
static kept_block kept[MAX_KEPT];
static int n_kept = 0;
static size_t held_bytes = 0;
static size_t limit_bytes = FASTCE_POOL_DEFAULT_LIMIT;
static int took_kept = 0;
static PyThread_type_lock lock = NULL;

static void *data_of(void *base) { return (char *)base + HEADER_BYTES; }
static void *base_of(void *data) { return (char *)data - HEADER_BYTES; }
static size_t capacity_of(void *data) { return *(size_t *)base_of(data); }

static void *new_block(size_t capacity) {
    if (capacity > (size_t)-1 - HEADER_BYTES) return NULL;
    void *base = malloc(HEADER_BYTES + capacity);
    if (base == NULL) return NULL;
    *(size_t *)base = capacity;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    /* as NumPy does for its own large arrays: fewer page faults and TLB misses */
    if (capacity >= FASTCE_POOL_MIN_BYTES) {
        size_t offset = 4096u - (size_t)data_of(base) % 4096u;
        madvise((char *)data_of(base) + offset, capacity - offset, MADV_HUGEPAGE);
    }
#endif
    return base;
}

static void drop_kept(int i) {
    free(kept[i].base);
    held_bytes -= kept[i].capacity;
    memmove(kept + i, kept + i + 1, (size_t)(n_kept - i - 1) * sizeof(kept_block));
    n_kept--;
}

static void trim_to(size_t bytes) {
    while (n_kept > 0 && held_bytes > bytes) drop_kept(0);
}

/* The kept block that best fits `size` (at least `size`, at most twice),
 * removed from the pool; NULL when none fits. */
static void *take_kept(size_t size) {
    int best = -1;
    for (int i = 0; i < n_kept; i++)
        if (kept[i].capacity >= size && kept[i].capacity / 2 <= size &&
            (best < 0 || kept[i].capacity < kept[best].capacity))
            best = i;
    if (best < 0) return NULL;
    void *base = kept[best].base;
    held_bytes -= kept[best].capacity;
    memmove(kept + best, kept + best + 1, (size_t)(n_kept - best - 1) * sizeof(kept_block));
    n_kept--;
    return base;
}

static void *pool_malloc(void *ctx, size_t size) {
    (void)ctx;
    if (size == 0) size = 1;
    void *base = NULL;
    took_kept = 0;
    if (size >= FASTCE_POOL_MIN_BYTES) {
        PyThread_acquire_lock(lock, WAIT_LOCK);
        base = take_kept(size);
        took_kept = base != NULL;
        PyThread_release_lock(lock);
    }
    if (base == NULL) base = new_block(size);
    return base == NULL ? NULL : data_of(base);
}

static void *pool_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    if (elsize != 0 && nelem > ((size_t)-1 - HEADER_BYTES) / elsize) return NULL;
    size_t size = nelem * elsize;
    if (size == 0) size = 1;
    /* zeroed by the C library, which knows which of its pages are fresh */
    void *base = calloc(1, HEADER_BYTES + size);
    if (base == NULL) return NULL;
    *(size_t *)base = size;
    return data_of(base);
}

static void pool_free(void *ctx, void *data, size_t size) {
    (void)ctx;
    (void)size; /* the block's own capacity is what it holds */
    if (data == NULL) return;
    size_t capacity = capacity_of(data);
    if (capacity >= FASTCE_POOL_MIN_BYTES) {
        PyThread_acquire_lock(lock, WAIT_LOCK);
        if (capacity <= limit_bytes) {
            if (n_kept == MAX_KEPT) drop_kept(0);
            kept[n_kept].base = base_of(data);
            kept[n_kept].capacity = capacity;
            n_kept++;
            held_bytes += capacity;
            trim_to(limit_bytes);
            PyThread_release_lock(lock);
            return;
        }
        PyThread_release_lock(lock);
    }
    free(base_of(data));
}

static void *pool_realloc(void *ctx, void *data, size_t new_size) {
    if (data == NULL) return pool_malloc(ctx, new_size);
    void *moved = pool_malloc(ctx, new_size);
    if (moved == NULL) return NULL;
    size_t old = capacity_of(data);
    memcpy(moved, data, old < new_size ? old : new_size);
    pool_free(ctx, data, old);
    return moved;
}

PyDataMem_Handler fastce_result_handler = {
    "fastce_result_pool",
    1,
    {NULL, pool_malloc, pool_calloc, pool_realloc, pool_free},
};

int fastce_result_pool_init(void) {
    if (lock != NULL) return 0;
    lock = PyThread_allocate_lock();
    if (lock == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

void fastce_result_pool_set_limit(size_t bytes) {
    PyThread_acquire_lock(lock, WAIT_LOCK);
    limit_bytes = bytes;
    trim_to(limit_bytes);
    PyThread_release_lock(lock);
}

size_t fastce_result_pool_limit(void) { return limit_bytes; }

size_t fastce_result_pool_held(void) { return held_bytes; }

int fastce_result_pool_took_kept(void) {
    int took = took_kept;
    took_kept = 0;
    return took;
}
