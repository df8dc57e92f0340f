/* The portable vocabulary for one element type: included by vec_base.h with
 * FASTCE_BASE_T, _SFX, _BITS, _LANES, _MANT, _SHIFTER_BITS and _BIAS defined.
 *
 * With GCC or Clang a vector is one of their generic vectors, which they
 * lower to the target's own vector instructions (two SSE2 registers, or two
 * NEON ones, per vector); another compiler gets an array of lanes and loops
 * over it.  The list of operations below is written once; only the shapes of
 * an operation (lane-wise arithmetic, compare, bit select) have a form for each. */

#define FASTCE_ISA base
#define FASTCE_SFX FASTCE_BASE_SFX
#define T_ FASTCE_BASE_T
#define N_ FASTCE_BASE_LANES
#define U_ FASTCE_NAME5(u, FASTCE_BASE_BITS, _t, , ) /* the unsigned integer of T_'s width */
#define LANES_ for (int k = 0; k < N_; k++)

#if defined(__GNUC__) || defined(__clang__)
typedef T_ VOP(t) __attribute__((vector_size(N_ * sizeof(T_))));
/* a mask lane is all ones or all zeros, as wide as an element; the same type
 * holds an element's bits */
typedef U_ VOP(m) __attribute__((vector_size(N_ * sizeof(T_))));
#define LANE_(v, k) (v)[k]
#define LANEWISE_(name, op) \
    VINLINE VOP(t) VOP(name)(VOP(t) a, VOP(t) b) { return a op b; }
#define COMPARE_(name, op) \
    VINLINE VOP(m) VOP(name)(VOP(t) a, VOP(t) b) { return (VOP(m))(a op b); }
#define BITWISE_(name, op) \
    VINLINE VOP(m) VOP(name)(VOP(m) a, VOP(m) b) { return a op b; }
#define BITS_SHIFT_(name, op) \
    VINLINE VOP(m) VOP(name)(VOP(m) a, int n) { return a op n; }
VINLINE VOP(m) VOP(bits)(VOP(t) a) { return (VOP(m))a; }
VINLINE VOP(t) VOP(from_bits)(VOP(m) a) { return (VOP(t))a; }
#else
typedef struct {
    T_ v[N_];
} VOP(t);
typedef struct {
    U_ v[N_];
} VOP(m);
#define LANE_(v, k) (v).v[k]
#define LANEWISE_(name, op)                        \
    VINLINE VOP(t) VOP(name)(VOP(t) a, VOP(t) b) { \
        VOP(t) r;                                  \
        LANES_ r.v[k] = a.v[k] op b.v[k];          \
        return r;                                  \
    }
#define COMPARE_(name, op)                              \
    VINLINE VOP(m) VOP(name)(VOP(t) a, VOP(t) b) {      \
        VOP(m) r;                                       \
        LANES_ r.v[k] = (U_)0 - (U_)(a.v[k] op b.v[k]); \
        return r;                                       \
    }
#define BITWISE_(name, op)                         \
    VINLINE VOP(m) VOP(name)(VOP(m) a, VOP(m) b) { \
        VOP(m) r;                                  \
        LANES_ r.v[k] = a.v[k] op b.v[k];          \
        return r;                                  \
    }
#define BITS_SHIFT_(name, op)                   \
    VINLINE VOP(m) VOP(name)(VOP(m) a, int n) { \
        VOP(m) r;                               \
        LANES_ r.v[k] = a.v[k] op n;            \
        return r;                               \
    }
VINLINE VOP(m) VOP(bits)(VOP(t) a) {
    VOP(m) r;
    memcpy(&r, &a, sizeof r);
    return r;
}
VINLINE VOP(t) VOP(from_bits)(VOP(m) a) {
    VOP(t) r;
    memcpy(&r, &a, sizeof r);
    return r;
}
#endif
/* the gather is a lane at a time here */
enum { VOP(lanes) = N_, VOP(sum_ahead_unroll) = 4, VOP(gathers_fast) = 0 };

LANEWISE_(add, +)
LANEWISE_(sub, -)
LANEWISE_(mul, *)
LANEWISE_(div, /)
COMPARE_(eq, ==)
COMPARE_(gt, >)
COMPARE_(lt, <)
COMPARE_(ge, >=)
BITWISE_(and_m, &)
BITWISE_(or_m, |)
BITWISE_(xor_bits, ^)
BITWISE_(add_bits, +)
BITS_SHIFT_(shl_bits, <<)
BITS_SHIFT_(shr_bits, >>)

VINLINE VOP(t) VOP(set1)(T_ a) {
    VOP(t) r;
    LANES_ LANE_(r, k) = a;
    return r;
}
VINLINE VOP(t) VOP(zero)(void) { return VOP(set1)(0); }
VINLINE VOP(m) VOP(set1_bits)(U_ a) {
    VOP(m) r;
    LANES_ LANE_(r, k) = a;
    return r;
}
VINLINE VOP(t) VOP(load)(const T_ *p) {
    VOP(t) r;
    memcpy(&r, p, sizeof r);
    return r;
}
VINLINE void VOP(store)(T_ *p, VOP(t) a) { memcpy(p, &a, sizeof a); }
/* portable C has no store past the caches: a plain one, needing no fence */
VINLINE void VOP(stream)(T_ *p, VOP(t) a) { memcpy(p, &a, sizeof a); }
VINLINE void VOP(stream_fence)(void) {}
VINLINE VOP(m) VOP(first)(ptrdiff_t n) {
    VOP(m) r;
    LANES_ LANE_(r, k) = (U_)0 - (U_)(k < n);
    return r;
}
VINLINE VOP(t) VOP(load_part_or)(const T_ *p, VOP(m) m, VOP(t) fill) {
    VOP(t) r = fill;
    LANES_ if (LANE_(m, k)) LANE_(r, k) = p[k];
    return r;
}
VINLINE VOP(t) VOP(load_part)(const T_ *p, VOP(m) m) {
    return VOP(load_part_or)(p, m, VOP(zero)());
}
VINLINE void VOP(store_part)(T_ *p, VOP(m) m, VOP(t) a) {
    LANES_ if (LANE_(m, k)) p[k] = LANE_(a, k);
}
VINLINE VOP(t) VOP(strided)(const T_ *p, ptrdiff_t stride) {
    VOP(t) r;
    LANES_ LANE_(r, k) = p[k * stride];
    return r;
}
VINLINE void VOP(store_strided)(T_ *p, ptrdiff_t stride, VOP(t) a) {
    LANES_ p[k * stride] = LANE_(a, k);
}
VINLINE VOP(t) VOP(gather)(const T_ *p, ptrdiff_t stride, VOP(m) m) {
    VOP(t) r = VOP(zero)();
    LANES_ if (LANE_(m, k)) LANE_(r, k) = p[k * stride];
    return r;
}

/* a * b + c; the compiler may fuse it where the target has the instruction */
VINLINE VOP(t) VOP(fma)(VOP(t) a, VOP(t) b, VOP(t) c) { return VOP(add)(VOP(mul)(a, b), c); }
VINLINE VOP(t) VOP(fnma)(VOP(t) a, VOP(t) b, VOP(t) c) { return VOP(sub)(c, VOP(mul)(a, b)); }

VINLINE VOP(m) VOP(not_m)(VOP(m) a) { return VOP(xor_bits)(a, VOP(set1_bits)((U_)0 - 1)); }
/* bit selects, not branches, so that the compiler keeps them in vectors */
VINLINE VOP(t) VOP(select)(VOP(m) m, VOP(t) a, VOP(t) b) {
    return VOP(from_bits)(
        VOP(or_m)(VOP(and_m)(VOP(bits)(a), m), VOP(and_m)(VOP(bits)(b), VOP(not_m)(m))));
}
VINLINE VOP(t) VOP(keep)(VOP(m) m, VOP(t) a) { return VOP(from_bits)(VOP(and_m)(VOP(bits)(a), m)); }
VINLINE VOP(t) VOP(drop)(VOP(m) m, VOP(t) a) {
    return VOP(from_bits)(VOP(and_m)(VOP(bits)(a), VOP(not_m)(m)));
}
/* a > b ? a : b: a NaN in a leaves b */
VINLINE VOP(t) VOP(max)(VOP(t) a, VOP(t) b) { return VOP(select)(VOP(gt)(a, b), a, b); }
VINLINE VOP(t) VOP(min)(VOP(t) a, VOP(t) b) { return VOP(select)(VOP(lt)(a, b), a, b); }

VINLINE int VOP(count)(VOP(m) m) {
    int n = 0;
    LANES_ n += (int)(LANE_(m, k) & 1);
    return n;
}
VINLINE int VOP(first_set)(VOP(m) m) {
    LANES_ if (LANE_(m, k)) return k;
    return -1;
}
VINLINE double VOP(hsum)(VOP(t) a) {
    double s = 0;
    LANES_ s += (double)LANE_(a, k);
    return s;
}
VINLINE T_ VOP(hmax)(VOP(t) a) {
    T_ m = LANE_(a, 0);
    LANES_ m = LANE_(a, k) > m ? LANE_(a, k) : m;
    return m;
}

VINLINE VOP(t) VOP(scale_pow2_unless)(VOP(m) m, VOP(t) p, VOP(t) n, VOP(t) t) {
    (void)n;
    VOP(m)
    biased = VOP(add_bits)(VOP(bits)(t),
                           VOP(set1_bits)((U_)FASTCE_BASE_BIAS - (U_)FASTCE_BASE_SHIFTER_BITS));
    return VOP(drop)(m, VOP(mul)(p, VOP(from_bits)(VOP(shl_bits)(biased, FASTCE_BASE_MANT))));
}
/* the shift drops t's high bits by design */
VINLINE VOP(t) VOP(ldexp_shifted)(VOP(t) p, VOP(t) t) {
    return VOP(from_bits)(
        VOP(add_bits)(VOP(bits)(p), VOP(shl_bits)(VOP(bits)(t), FASTCE_BASE_MANT)));
}

/* s = f * 2^e with f in [1, 2), for finite normal s > 0 */
VINLINE VOP(t) VOP(split_exp)(VOP(t) s, VOP(t) * e) {
    VOP(m) bits = VOP(bits)(s);
    VOP(m) biased = VOP(shr_bits)(bits, FASTCE_BASE_MANT);
    VOP(m) mantissa = VOP(set1_bits)(((U_)1 << FASTCE_BASE_MANT) - 1);
    LANES_ LANE_(*e, k) = (T_)LANE_(biased, k) - (T_)FASTCE_BASE_BIAS;
    return VOP(from_bits)(VOP(or_m)(VOP(and_m)(bits, mantissa), VOP(bits)(VOP(set1)(1))));
}

#undef LANEWISE_
#undef COMPARE_
#undef BITWISE_
#undef BITS_SHIFT_
#undef LANE_
#undef LANES_
#undef U_
#undef N_
#undef T_
#undef FASTCE_SFX
#undef FASTCE_ISA
#undef FASTCE_BASE_T
#undef FASTCE_BASE_SFX
#undef FASTCE_BASE_BITS
#undef FASTCE_BASE_LANES
#undef FASTCE_BASE_MANT
#undef FASTCE_BASE_SHIFTER_BITS
#undef FASTCE_BASE_BIAS
