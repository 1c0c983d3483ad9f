"""Statistics of the series' experiments, one home, with scipy behind one face.

- ``bootstrap_mean`` / ``bootstrap_interval``: the mean of per-window values (losses), or of their paired
  difference from a baseline scored on the same windows, with scipy's BCa bootstrap interval
  (``scipy.stats.bootstrap``, windows resampled by a seeded generator): a maintained, tested bootstrap rather
  than a resampling loop of our own. Used by the SmolLM2 conversions (notebooks 06, 07) and the cache
  comparison (notebook 08).
- ``bootstrap_ratio``: how many times one paired change is another (E5M2's loss change against E4M3's, both
  from the same original on the same windows), with its BCa interval (notebook 08).
- ``t_975``: Student's t quantile for 95% intervals over seeds (the KV-head sweep of notebook 06).
- ``holm``: Holm's step-down adjustment for a family of tests (Holm 1979).
- ``paired_ratio``: a ratio of paired timings (rep by rep) with its t interval on the log scale (notebook 06's
  speed-ups and shares of a bound).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from gqa_lib.core.checks import check_positive_int


def per_window(name: str, values, n: int | None = None) -> np.ndarray:
    """``values`` as a 1-D float64 array of at least 2 finite numbers (and ``n`` of them if given)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"{name} has shape {x.shape}; need a 1-D array of at least 2 per-window values "
                         "(the bootstrap resamples windows)")
    if n is not None and len(x) != n:
        raise ValueError(f"{name} has {len(x)} windows, the others {n}: paired values need the same windows")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds a non-finite value at window {int(np.flatnonzero(~np.isfinite(x))[0])}")
    return x


def bootstrap_mean(values, baseline=None, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float, float]:
    """Mean of ``values`` (n,) with its bootstrap standard error and confidence interval: (mean, se, low, high).

    With ``baseline`` (n,), the same windows scored another way, it is the mean of ``values - baseline``
    paired by window: each window's difficulty cancels, so the interval of a difference is much tighter
    than the two intervals side by side suggest. scipy.stats.bootstrap (the BCa interval, 2000 resamples
    of the windows drawn by ``numpy.random.default_rng(seed)``): a maintained, tested bootstrap rather than
    our own resampling loop; its ``standard_error`` is the standard deviation of the resampled means.
    Values that are all equal (a model compared with itself) give (mean, 0, mean, mean): every resample
    has the same mean, and BCa's correction would divide zero by zero.
    """
    x = per_window("values", values)
    if baseline is not None:
        x = x - per_window("baseline", baseline, len(x))
    mean = float(x.mean())
    if np.ptp(x) == 0:
        return mean, 0.0, mean, mean
    res = scipy.stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                    rng=np.random.default_rng(seed))
    return mean, float(res.standard_error), float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_interval(values, baseline=None, confidence: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """The (low, high) interval of :func:`bootstrap_mean`: of the mean of ``values``, or of ``values - baseline``."""
    _, _, low, high = bootstrap_mean(values, baseline, confidence, n_resamples, seed)
    return low, high


def bootstrap_ratio(values, reference, baseline, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """mean(values - baseline) / mean(reference - baseline), paired by window: (ratio, low, high).

    ``values``, ``reference``, ``baseline``: (n,) per-window losses of three methods on the same windows (for
    notebook 08: FP8 E5M2, FP8 E4M3 and the original). Windows are resampled together (``paired=True``), so each
    window's difficulty cancels in both changes. scipy.stats.bootstrap's BCa interval (2000 resamples, drawn by
    ``numpy.random.default_rng(seed)``), as :func:`bootstrap_mean`: a maintained bootstrap, not a loop of ours.
    Errors: ValueError naming the argument for a shape or a non-finite value, and for a reference change whose
    mean is 0 (the ratio is undefined).
    """
    x = per_window("values", values)
    r = per_window("reference", reference, len(x))
    b = per_window("baseline", baseline, len(x))
    if float((r - b).mean()) == 0:
        raise ValueError("reference - baseline has mean 0: the ratio is undefined")

    def ratio(xs, rs, bs, axis=-1):
        return (xs - bs).mean(axis) / (rs - bs).mean(axis)

    res = scipy.stats.bootstrap((x, r, b), ratio, paired=True, vectorized=True, confidence_level=confidence,
                                n_resamples=n_resamples, method="BCa", rng=np.random.default_rng(seed))
    return float(ratio(x, r, b)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95% intervals).

    scipy computes it for any ``df``; a hand-typed table would cover only the ones someone typed.
    """
    check_positive_int("df", df)
    return float(scipy.stats.t.ppf(0.975, df))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), for a family of tests.

    Sort the m p-values ascending; the i-th smallest (i = 0..m-1) is multiplied by m - i, the running
    maximum keeps the order, and values are capped at 1 (Holm 1979). Rejecting where the adjusted value
    is below alpha keeps the chance of any false rejection in the family below alpha. (scipy offers
    only false-discovery-rate corrections, ``scipy.stats.false_discovery_control``; Holm controls the
    family-wise error, which a handful of planned comparisons calls for.)
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_ratio(numerator, denominator, confidence: float = 0.95, threshold: float | None = None) -> dict:
    """How many times ``numerator`` is ``denominator``, from paired positive values (timings of the same rep).

    The ratio is the geometric mean of the per-pair ratios, and its interval is Student's t interval on their
    logarithms, turned back into a ratio: a ratio of timings is multiplicative, and pairing each rep of one
    with the rep of the other made next to it cancels what slowed or sped up both (another program, the
    clock). Returns {'ratio', 'low', 'high', 'n', 'confidence'} and, with ``threshold``, 'p_at_most': the
    one-sided p-value of "the true ratio is at most ``threshold``" (small: the data say it is above).
    With fewer than 2 pairs there is no interval and ValueError says so.
    """
    a = per_window("numerator", numerator)
    b = per_window("denominator", denominator, len(a))
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("paired_ratio needs positive values (timings); got a value at or below 0")
    d = np.log(a) - np.log(b)
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(n))
    t = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1))
    out = {"ratio": float(np.exp(mean)), "low": float(np.exp(mean - t * se)), "high": float(np.exp(mean + t * se)),
           "n": n, "confidence": confidence}
    if threshold is not None:
        if se == 0:
            out["p_at_most"] = 0.0 if mean > np.log(threshold) else 1.0
        else:
            out["p_at_most"] = float(scipy.stats.t.sf((mean - np.log(threshold)) / se, n - 1))
    return out
