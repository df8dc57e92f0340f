/*
 * A hint that an address will be read soon, for the loops that jump through
 * memory faster than the hardware prefetchers can guess (nll_loss reads one
 * element of each row).  A compiler without the builtin gets no hint.
 */
#ifndef FASTCE_PREFETCH_H
#define FASTCE_PREFETCH_H

#if defined(__GNUC__) || defined(__clang__)
#define fastce_prefetch(p) __builtin_prefetch(p)
#else
#define fastce_prefetch(p) ((void)(p))
#endif

#endif /* FASTCE_PREFETCH_H */
