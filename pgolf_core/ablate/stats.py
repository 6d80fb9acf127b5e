"""Small, dependency-free statistics for ablations: Welch's t-test and the minimum detectable Δ.

Why our own: scipy is an optional extra; these few functions are exact enough (tested against
scipy where installed) and keep `pgolf ablate` working on a bare install.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for fewer than two values."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student t CDF through I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of the Student t distribution by bisection on `t_cdf`."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.01, power: float = 0.8) -> dict[str, float | None]:
    """Welch's t-test of mean(b) > mean(a) (b worse when the metric is a loss).

    Returns delta = mean(b) - mean(a), se, t, Welch–Satterthwaite df, one-sided p, and the
    minimum detectable Δ at p < alpha with `power`: (t_{1-alpha,df} + t_{power,df}) · se.
    None where fewer than two values on a side or no spread make them undefined.
    """
    delta = mean(b) - mean(a)
    out: dict[str, float | None] = {
        "delta": delta,
        "se": None,
        "t": None,
        "df": None,
        "p": None,
        "min_detectable": None,
    }
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    out["se"] = se
    if se == 0.0:
        return out
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = delta / se
    out.update(t=t, df=df, p=1.0 - t_cdf(t, df))
    out["min_detectable"] = (t_ppf(1.0 - alpha, df) + t_ppf(power, df)) * se
    return out
