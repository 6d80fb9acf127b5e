"""Small, dependency-free statistics for ablations: a two-sided Welch t-test and the minimum detectable Δ.

Why our own: scipy is an optional extra; these few functions are exact enough (tested against
scipy) and keep `pgolf ablate` working on a bare install.
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


def _nonzero(v: float) -> float:
    """Lentz's guard: a zero denominator becomes a tiny one instead of a division by zero."""
    return v if abs(v) > 1e-300 else 1e-300


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz), evaluated on the
    side of x where the fraction converges fast: I_x(a, b) = 1 - I_{1-x}(b, a)."""
    if not 0.0 < x < 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    f, c, d = 1.0, 1.0, 0.0
    for i in range(500):  # term i of 1 / (1 + d1 / (1 + d2 / ...)): d_{2m+1} and d_{2m} below
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / _nonzero(1.0 + num * d)
        c = _nonzero(1.0 + num / c)
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0) / a


def t_tails(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t: bisection on the two-sided tail, which falls as |t| grows."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_tails(mid, df) > 2.0 * (1.0 - q) else (lo, mid)
    return 0.5 * (lo + hi)


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.01, power: float = 0.8) -> dict[str, float | None]:
    """Two-sided Welch's t-test of mean(b) ≠ mean(a): an ablation can help or hurt, and both must show.

    Returns delta = mean(b) - mean(a), se, t, Welch–Satterthwaite df, the two-sided p, and the
    minimum detectable |Δ| at p < alpha with `power`: (t_{1-alpha/2,df} + t_{power,df}) · se.
    None where fewer than two values on a side or no spread make them undefined.
    """
    delta = mean(b) - mean(a)
    out: dict[str, float | None] = {"delta": delta, **dict.fromkeys(("se", "t", "df", "p", "min_detectable"))}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    out["se"] = se
    if se == 0.0:
        return out
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = delta / se
    out.update(t=t, df=df, p=t_tails(t, df), min_detectable=(t_ppf(1.0 - alpha / 2.0, df) + t_ppf(power, df)) * se)
    return out
