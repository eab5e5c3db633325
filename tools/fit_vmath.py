"""Fits the polynomial coefficients of csrc/vmath.h (run once; the output is pasted there).

    python tools/fit_vmath.py

Each approximation is a Chebyshev interpolant (mpmath.chebyfit, near-minimax) of a smooth
function on the reduced range its kernel evaluates, fitted at 50 digits and printed as
hex-float literals, highest degree first (Horner order). The printed error is the fit's
maximum absolute error before the coefficients are rounded to float / double.
"""
import re

import mpmath as mp
import numpy as np

mp.mp.dps = 50


def smooth(f):
    """f evaluated with extra digits: the functions below cancel near 0."""
    def g(v):
        with mp.workdps(150):
            return f(mp.mpf(v))
    return g


@smooth
def exp_q(r):  # e^r = 1 + r + r^2 q(r)
    return (mp.exp(r) - 1 - r) / r ** 2 if r != 0 else mp.mpf(1) / 2


@smooth
def log_p(w):  # log((1+s)/(1-s)) = 2 s + s w p(w), w = s^2
    if w == 0:
        return mp.mpf(2) / 3
    s = mp.sqrt(w)
    return (mp.log((1 + s) / (1 - s)) - 2 * s) / (s * w)


@smooth
def tanh_p(w):  # tanh(x) = x + x w p(w), w = x^2
    if w == 0:
        return -mp.mpf(1) / 3
    x = mp.sqrt(w)
    return (mp.tanh(x) - x) / (x * w)


@smooth
def erf_q(w):  # erf(x) = x + x q(w), w = x^2
    if w == 0:
        return 2 / mp.sqrt(mp.pi) - 1
    x = mp.sqrt(w)
    return mp.erf(x) / x - 1


K_ERFC = 3


@smooth
def erfc_e(t):  # erfc(z) = exp(-z^2) e(t) / (1 + 2 z), t = (z - K) / (z + K)
    z = K_ERFC * (1 + t) / (1 - t)
    return mp.erfc(z) * mp.exp(z * z) * (1 + 2 * z)


def t_of(z):
    z = mp.mpf(z)
    return (z - K_ERFC) / (z + K_ERFC)


LOG_W = ((mp.sqrt(2) - 1) / (mp.sqrt(2) + 1)) ** 2  # s^2 at f = sqrt(2) - 1
FITS = [
    # name, function, interval, terms for double, terms for float
    ("exp", exp_q, (-0.35, 0.35), 11, 6),
    ("log1p", log_p, (0, LOG_W * 1.001), 8, 4),
    ("tanh", tanh_p, (0, 0.625 ** 2), 12, 6),
    ("erf", erf_q, (0, 0.84375 ** 2), 12, 6),
    ("erfc_double", erfc_e, (t_of(0.5), t_of(28)), 22, None),
    ("erfc_float", erfc_e, (t_of(0.5), t_of(10.1)), None, 11),
]


def hex_literal(v):
    """C++ hex-float literal without the mantissa's trailing zeros."""
    return re.sub(r"\.?0+p", "p", v.hex())


def main():
    for name, f, (a, b), n64, n32 in FITS:
        for terms, np_type, suffix in ((n64, np.float64, ""), (n32, np.float32, "f")):
            if terms is None:
                continue
            coeffs, err = mp.chebyfit(f, [mp.mpf(a), mp.mpf(b)], terms, error=True)
            lits = [hex_literal(float(np_type(float(c)))) + suffix for c in coeffs]
            print(f"// {name} {np_type.__name__}: {terms} terms on [{mp.nstr(a, 6)}, {mp.nstr(b, 6)}], "
                  f"fit error {mp.nstr(err, 3)}")
            print("{" + ", ".join(lits) + "}")


if __name__ == "__main__":
    main()
