/*
 * Memory for fastce's large results, kept for the next result when NumPy
 * frees it.  A fresh allocation of a few hundred megabytes costs more than
 * the softmax that fills it: the operating system zeroes every page as it
 * is first touched.  Arrays are made with this handler (NumPy's
 * PyDataMem_Handler, set around the allocation), so they own their data as
 * any array does and NumPy hands the memory back here when the last view
 * goes; the handler keeps it, up to a byte limit, for the next result of
 * about the same size.
 */
#ifndef FASTCE_RESULT_POOL_H
#define FASTCE_RESULT_POOL_H

#include <Python.h>
#include <numpy/ndarraytypes.h>
#include <stddef.h>

/* Results smaller than this are not kept: the C library's allocator reuses
 * their memory already. */
#define FASTCE_POOL_MIN_BYTES ((size_t)4 << 20)

/* The most bytes kept until told otherwise. */
#define FASTCE_POOL_DEFAULT_LIMIT ((size_t)512 << 20)

/* The handler, for a "mem_handler" capsule. */
extern PyDataMem_Handler fastce_result_handler;

/* Sets up the lock; 0 on success, -1 with a Python error set. */
int fastce_result_pool_init(void);

/* The most bytes of freed results kept; lowering it frees what is over. */
void fastce_result_pool_set_limit(size_t bytes);
size_t fastce_result_pool_limit(void);

/* Bytes of freed results held now. */
size_t fastce_result_pool_held(void);

/* Whether the last allocation took a kept block (memory written before),
 * and forgets it. */
int fastce_result_pool_took_kept(void);

#endif /* FASTCE_RESULT_POOL_H */
