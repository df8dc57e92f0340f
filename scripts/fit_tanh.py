"""Fits the float32 tanh of the soft-cap (csrc/kernels_body.h, vtanh):

    tanh(u) ~= u P(u^2) / Q(u^2),  P and Q of degree 4, Q(0) = 1,  |u| <= 9,

minimising the largest relative error by Lawson's iteration: weighted least
squares on the linearised residual (P - g Q) / (g Q'), with g = tanh(u) / u
and Q' the previous Q, each point's weight multiplied by its error until the
error levels out.  Prints the coefficients as float32 literals and the fit's
relative error; then the error in ulp of the float32 evaluation the kernels
do (Horner's rule with fused multiply-adds, one division), against float64
tanh.

    python scripts/fit_tanh.py
"""

import numpy as np

BOUND = 9.0  # tanh(9) rounds to 1 - 2^-24 in float32; beyond it, u is clamped
DEGREES = (4, 4)  # of P and Q, in u^2


def fit(n_p: int, n_q: int, bound: float, iterations: int = 150) -> tuple[np.ndarray, float]:
    """(p_0..p_{n_p}, q_1..q_{n_q}) and the largest relative error."""
    # Chebyshev points in s = u^2
    s = (np.cos(np.linspace(np.pi, 0.0, 4000)) + 1) / 2 * bound * bound
    u = np.sqrt(s)
    g = np.ones_like(u)
    g[u > 0] = np.tanh(u[u > 0]) / u[u > 0]
    powers_p = np.vander(s, n_p + 1, increasing=True)
    powers_q = np.vander(s, n_q + 1, increasing=True)[:, 1:]
    weight = np.ones_like(s)
    q_prev = np.ones_like(s)
    for _ in range(iterations):
        scale = np.sqrt(weight) / (g * q_prev)
        a = np.hstack([powers_p, -g[:, None] * powers_q]) * scale[:, None]
        coef = np.linalg.lstsq(a, g * scale, rcond=None)[0]
        p = powers_p @ coef[: n_p + 1]
        q = 1 + powers_q @ coef[n_p + 1 :]
        error = np.abs(p / q - g) / g
        weight = weight * error
        weight /= weight.sum()
        q_prev = q
    return coef, float(error.max())


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    # the product of two floats is exact in a double: one rounding, as a fused multiply-add
    return (a.astype(np.float64) * b + c).astype(np.float32)


def float32_tanh(u: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    uc = np.clip(u, -BOUND, BOUND).astype(np.float32)
    s = uc * uc
    num = np.full_like(s, p[-1])
    for c in p[-2::-1]:
        num = fma32(num, s, np.float32(c))
    den = np.full_like(s, q[-1])
    for c in q[-2::-1]:
        den = fma32(den, s, np.float32(c))
    return (uc * num) / den


def main() -> None:
    n_p, n_q = DEGREES
    coef, error = fit(n_p, n_q, BOUND)
    p = coef[: n_p + 1].astype(np.float32)
    q = np.concatenate([[1.0], coef[n_p + 1 :]]).astype(np.float32)
    print(f"relative error of the fit on [-{BOUND}, {BOUND}]: {error:.3g}")
    for name, values in (("P", p), ("Q", q)):
        print(name, ", ".join(f"{v:.9e}f" for v in values), "(from u^0 up)")
    u = np.concatenate(
        [np.linspace(0.0, 12.0, 2_000_001), 2.0 ** np.arange(-40.0, 4.0, 0.01)]
    ).astype(np.float32)
    want = np.tanh(u.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    got = float32_tanh(u, p, q).astype(np.float64)
    print(f"float32 evaluation: at most {np.max(np.abs(got - want) / ulp):.2f} ulp")


if __name__ == "__main__":
    main()
