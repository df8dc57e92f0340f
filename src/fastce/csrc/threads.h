/*
 * How many threads fastce's kernels may use, and when they must use one.
 * Included by fastce._kernels only: the other extension asks it (thread_count).
 */
#ifndef FASTCE_THREADS_H
#define FASTCE_THREADS_H

#include "build_info.h"

/* 0: follow OpenMP's own maximum (OMP_NUM_THREADS, threadpoolctl) */
static int fastce_thread_limit = 0;

/* No call starts more threads than this, whatever it asks for: a small
 * multiple of the cores the process may run on, and OpenMP's own limit.
 * Results do not depend on the thread count, so the cap changes only how
 * many threads the operating system is asked for -- never so many that it
 * cannot create them (libgomp aborts the process when it fails to). */
static int fastce_thread_cap = 1;

/* GNU OpenMP's thread team does not survive fork(): a child of a process
 * that has run a team would hang in its next parallel region.  The team may
 * be another library's (torch shares the same runtime), which fastce cannot
 * see, so every forked child runs every kernel on its own thread.
 * fastce_team_started says whether fastce itself had run one. */
static int fastce_team_started = 0;
static int fastce_forked_child = 0;

#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
static void fastce_after_fork_in_child(void) { fastce_forked_child = 1; }
static void fastce_register_fork_handler(void) {
    pthread_atfork(NULL, NULL, fastce_after_fork_in_child);
}
#else
static void fastce_register_fork_handler(void) {}
#endif

#ifdef _OPENMP
#include <omp.h>
static int fastce_openmp_thread_limit(void) { return omp_get_thread_limit(); }
static int fastce_default_threads(void) {
    return fastce_thread_limit > 0 ? fastce_thread_limit : omp_get_max_threads();
}
#else
static int fastce_openmp_thread_limit(void) { return 1; }
static int fastce_default_threads(void) { return 1; }
#endif

/* ``requested`` threads (0: the process-wide count), within the cap; 1 in a
 * forked child. */
static int fastce_allowed_threads(int requested) {
    int n = requested > 0 ? requested : fastce_default_threads();
    if (fastce_forked_child || n < 1) return 1;
    return n < fastce_thread_cap ? n : fastce_thread_cap;
}

#endif /* FASTCE_THREADS_H */
