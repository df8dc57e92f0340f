/*
 * What an extension reports of its own build: the compiler flags setup.py
 * passed (FASTCE_COMPILE_ARGS), and whether OpenMP was on (FASTCE_OPENMP).
 */
#ifndef FASTCE_BUILD_INFO_H
#define FASTCE_BUILD_INFO_H

#ifndef FASTCE_COMPILE_ARGS
#define FASTCE_COMPILE_ARGS ""
#endif

#ifdef _OPENMP
#define FASTCE_OPENMP 1
#else
#define FASTCE_OPENMP 0
#endif

#endif /* FASTCE_BUILD_INFO_H */
