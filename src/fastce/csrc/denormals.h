/*
 * Results below the normal range are flushed to zero while a work unit of a
 * gradient or an evaluation runs (Walk.flush_subnormals).  Intel cores take
 * a microcode assist of about a hundred cycles for each arithmetic result
 * that is subnormal, and the probabilities of logits far below their row's
 * maximum land there once scaled (a float32 gradient of logits spread over
 * about 70 ran 6 times slower, evaluate's sum of squared probabilities
 * likewise).  Such a result is below 1e-38 (float32) or 1e-308 (float64)
 * where the row's largest term is about 1: no tolerance sees it become 0.
 * The thread's own setting is put back when the unit ends.  Only x86 has the
 * assists; elsewhere this does nothing.
 */
#ifndef FASTCE_DENORMALS_H
#define FASTCE_DENORMALS_H

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
typedef unsigned int fastce_fp_mode_t;
static inline fastce_fp_mode_t fastce_flush_denormals(void) {
    fastce_fp_mode_t mode = _mm_getcsr();
    _mm_setcsr(mode | _MM_FLUSH_ZERO_ON);
    return mode;
}
static inline void fastce_restore_fp_mode(fastce_fp_mode_t mode) { _mm_setcsr(mode); }
#else
typedef unsigned int fastce_fp_mode_t;
static inline fastce_fp_mode_t fastce_flush_denormals(void) { return 0; }
static inline void fastce_restore_fp_mode(fastce_fp_mode_t mode) { (void)mode; }
#endif

#endif /* FASTCE_DENORMALS_H */
