"""The statistics of the report: mean and standard deviation over seeds, confidence intervals of differences, a
seed plan from the paired t-test's power, a bootstrap over test images and seeds, and McNemar's exact test.
Distributions come from scipy.stats; each function states what it returns for the edge cases (too few values, no
variance). Values with no spread (all equal to EQUAL_TOL) give no interval and no plan, never a zero-width one.

Accuracies are in percent throughout; a "difference" is row A minus row B.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

# Differences of accuracies in percent that agree to this many points are equal: per-seed differences that are
# "the same" (a small test set gives accuracies in steps of 100 / n images) differ by floating-point rounding only.
EQUAL_TOL = 1e-9
MIN_ALPHA = 1e-6  # the smallest level the seed plan takes: below it the t quantile runs far out (6e299 at 1e-300
#                   with one degree of freedom), where scipy's noncentral t fails; no seed plan needs such a level
MAX_POWER = 1 - 1e-6  # the largest power the seed plan takes
SEED_CAP = 100_000  # seed counts beyond this are reported as "more than SEED_CAP", not searched
MIN_BOOTSTRAP = 100  # fewer replicates have no 2.5% tail to read a 95% percentile interval from
MAX_BOOTSTRAP = 1_000_000  # more change no printed digit of an interval, and only cost time
_NC_MAX = 1e9  # |noncentrality| is clamped here: the power is already 1.0 for every allowed alpha, and scipy's
#                noncentral t returns nan from about 3e9 on


def no_spread(values) -> bool:
    """Whether `values` (at least one) all agree to EQUAL_TOL: then they have no spread to estimate an interval
    or a seed plan from."""
    v = np.asarray(list(values), dtype=float)
    return bool(v.max() - v.min() <= EQUAL_TOL)


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) over the values that are not None: (None, None, 0) when there are
    none, std None with one value."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return m, s, len(vals)


@dataclass(frozen=True)
class Interval:
    """A difference A - B with its confidence interval. `paired`: the paired t-interval over the `n` seeds both
    rows have; otherwise Welch's interval over `n` = n_a + n_b runs (`n_a`, `n_b` kept). lo/hi are None when the
    interval is undefined, and `why` then says why: too few values (one pair; fewer than 2 runs in a row for
    Welch), or no spread to estimate one from (every difference equal; for Welch, every run of each row equal),
    where a t-interval would have zero width."""
    mean: float
    lo: float | None
    hi: float | None
    n: int
    paired: bool
    n_a: int = 0
    n_b: int = 0
    why: str | None = None

    @property
    def test(self) -> str:
        return f"paired t, n={self.n}" if self.paired else f"Welch t, n={self.n_a}+{self.n_b}"


def paired_interval(diffs, confidence: float = 0.95) -> Interval:
    """The t-interval of the mean of per-seed differences `diffs` (scipy's one-sample t-test). With one
    difference, or with all differences equal (`no_spread`: nothing to estimate the spread from), lo/hi are None
    and `why` says which."""
    d = np.asarray(list(diffs), dtype=float)
    if len(d) == 0:
        raise ValueError("no paired differences")
    mean = float(d.mean())
    if len(d) < 2:
        return Interval(mean, None, None, 1, True, why="one pair")
    if no_spread(d):
        return Interval(mean, None, None, len(d), True, why=f"no spread (all {len(d)} differences equal)")
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), len(d), True)


def welch_interval(a, b, confidence: float = 0.95) -> Interval:
    """Welch's t-interval of mean(a) - mean(b) for two independent samples (scipy's ttest_ind, equal_var=False).
    lo/hi are None, with `why`, when either sample has fewer than 2 values or neither varies."""
    a, b = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("an empty sample")
    mean = float(a.mean() - b.mean())
    why = ("a row with one run" if len(a) < 2 or len(b) < 2 else
           f"no spread (all {len(a)} + {len(b)} runs equal within each row)" if no_spread(a) and no_spread(b) else None)
    if why:
        return Interval(mean, None, None, len(a) + len(b), False, len(a), len(b), why=why)
    with warnings.catch_warnings():  # one row without spread is fine for Welch; scipy warns of precision loss
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), len(a) + len(b), False, len(a), len(b))


def difference_interval(a: dict, b: dict, confidence: float = 0.95) -> Interval | None:
    """The interval of A - B from per-seed values {seed: value}: paired over the shared seeds when there are any,
    else Welch over all runs. None when a row has no value."""
    if not a or not b:
        return None
    shared = sorted(a.keys() & b.keys())
    if shared:
        return paired_interval([a[s] - b[s] for s in shared], confidence)
    return welch_interval(a.values(), b.values(), confidence)


# ----------------------------------------------------------------------------------------------------
# power of the paired t-test
# ----------------------------------------------------------------------------------------------------
def check_plan(power: float, alpha: float) -> None:
    """Raise ValueError unless MIN_ALPHA <= alpha < power <= MAX_POWER: a two-sided test at level alpha already
    rejects with probability alpha when there is no difference, so a power at or below alpha asks for nothing,
    and levels below MIN_ALPHA put the t quantile out of floating-point reach."""
    if not MIN_ALPHA <= alpha < 1:
        raise ValueError(f"the level alpha {alpha:.10g} is not in [{MIN_ALPHA:g}, 1)")
    if not power > alpha:
        raise ValueError(f"the power {power:.10g} must be above the level alpha {alpha:.10g}: a two-sided test at "
                         f"level alpha rejects with probability alpha even when there is no difference")
    if not power <= MAX_POWER:
        raise ValueError(f"the power {power:.10g} must be at most {MAX_POWER:g}")


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level `alpha` with `n` pairs to detect a true mean difference
    `delta` when the differences have standard deviation `sd` (noncentral t with n - 1 degrees of freedom and
    noncentrality delta * sqrt(n) / sd, clamped to +-1e9, where the power is 1 for every alpha >= MIN_ALPHA). Both
    tails use the survival function (nct.cdf returns nan at large noncentrality). Requires n >= 2, sd > 0 and
    MIN_ALPHA <= alpha < 1."""
    if n < 2 or sd <= 0:
        raise ValueError("paired_power needs n >= 2 and sd > 0")
    if not MIN_ALPHA <= alpha < 1:
        raise ValueError(f"alpha {alpha:.10g} is not in [{MIN_ALPHA:g}, 1)")
    df, nc = n - 1, max(-_NC_MAX, min(_NC_MAX, delta * math.sqrt(n) / sd))
    crit = stats.t.isf(alpha / 2, df)
    p = _t_tail(crit, df, nc) + _t_tail(crit, df, -nc)
    if not math.isfinite(p):
        raise ArithmeticError(f"power is not finite (df {df}, noncentrality {nc:.3g})")
    return min(p, 1.0)


_Z = np.linspace(-12.0, 12.0, 4801)  # the grid of the fallback's integral over a standard normal Z
_Z_PDF = stats.norm.pdf(_Z)


def _t_tail(crit: float, df: int, nc: float) -> float:
    """P(T > crit) for T noncentral t with `df` degrees of freedom and noncentrality `nc` (crit > 0): scipy's
    survival function, or for a far quantile (crit > 300: one degree of freedom and alpha below about 1e-3, where
    scipy's series converges slowly or not at all, with a RuntimeWarning) and wherever scipy warns, the integral
    over Z of P(S < (Z + nc) / crit), with T = (Z + nc) / S and S**2 a chi-square over df (Simpson's rule on Z in
    [-12, 12]; it agrees with scipy's quad to 1e-13)."""
    if crit <= 300:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = float(stats.nct.sf(crit, df, nc))
        if not caught and math.isfinite(p):
            return p
    s = np.maximum(_Z + nc, 0.0) / crit
    return min(1.0, max(0.0, float(integrate.simpson(_Z_PDF * stats.chi2.cdf(df * s * s, df), x=_Z))))


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, cap: int = SEED_CAP) -> int | None:
    """The smallest number of pairs (>= 2) whose paired t-test reaches `power` for `delta` at `alpha`; None when
    even `cap` pairs do not. Requires sd > 0 (with no spread there is no plan) and `check_plan`'s power and alpha."""
    if not sd > 0:
        raise ValueError("seeds_needed needs sd > 0: with no spread there is nothing to plan from")
    check_plan(power, alpha)
    if paired_power(delta, sd, cap, alpha) < power:
        return None
    lo, hi = 2, 2
    while paired_power(delta, sd, hi, alpha) < power:  # power grows with n: double, then bisect
        lo, hi = hi, min(2 * hi, cap)
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(delta, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


def resolvable_delta(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float | None:
    """The smallest true difference that `n` pairs detect with `power` at `alpha` (the inverse of
    `paired_power` in delta); None with fewer than 2 pairs. Requires sd > 0 and `check_plan`'s power and alpha."""
    if n < 2:
        return None
    if not sd > 0:
        raise ValueError("resolvable_delta needs sd > 0: with no spread there is nothing to plan from")
    check_plan(power, alpha)
    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-10))


# ----------------------------------------------------------------------------------------------------
# per-image statistics
# ----------------------------------------------------------------------------------------------------
BOOTSTRAP_OVER = ("both", "images", "seeds")


def bootstrap_interval(a: dict, b: dict, n_boot: int, seed: int = 0, confidence: float = 0.95,
                       chunk: int = 500, over: str = "both") -> tuple[float, float]:
    """Percentile bootstrap interval of A - B (accuracy points): the `confidence` percentiles of
    `bootstrap_replicates` (see there). Every replicate equal (`no_spread`) gives a zero-width interval, which
    is no interval: a caller says so in its place."""
    return percentile_interval(bootstrap_replicates(a, b, n_boot, seed, chunk, over), confidence)


def percentile_interval(reps, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap replicates `reps`."""
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(reps, tail)), float(np.percentile(reps, 100 - tail))


def bootstrap_replicates(a: dict, b: dict, n_boot: int, seed: int = 0, chunk: int = 500,
                         over: str = "both") -> np.ndarray:
    """`n_boot` (at least MIN_BOOTSTRAP) bootstrap replicates of A - B (accuracy points) from per-image records
    {seed: bool array (N,)} of the same N test images. Each replicate resamples the test images (one draw, shared
    by every run) and the seeds: the shared seeds as pairs when the rows share any (the statistic is the mean
    paired difference), else each row's seeds on their own (the difference of the rows' means). `over` "images"
    keeps every seed once (the interval then depends on the runs only through each image's mean over seeds),
    "seeds" keeps every image once (it depends only on each run's accuracy). Deterministic for a given `seed` and
    `over`."""
    if n_boot < MIN_BOOTSTRAP:
        raise ValueError(f"n_boot must be at least {MIN_BOOTSTRAP}: fewer replicates have no 2.5% tail")
    if over not in BOOTSTRAP_OVER:
        raise ValueError(f"over must be one of {', '.join(BOOTSTRAP_OVER)}, not {over!r}")
    shared = sorted(a.keys() & b.keys())
    rows = ([np.stack([a[s] for s in shared]).astype(np.float64) - np.stack([b[s] for s in shared])]
            if shared else [np.stack(list(a.values())).astype(np.float64), np.stack(list(b.values())).astype(np.float64)])
    n_img = rows[0].shape[1]
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        img_w = (np.full((n_img, k), 1 / n_img) if over == "seeds" else  # (N, k), columns sum to 1
                 rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=k).T / n_img)
        parts = []
        for m in rows:
            seed_w = (np.full((m.shape[0], k), 1 / m.shape[0]) if over == "images" else
                      rng.multinomial(m.shape[0], np.full(m.shape[0], 1 / m.shape[0]), size=k).T / m.shape[0])
            parts.append(((m @ img_w) * seed_w).sum(0))  # (k,): weighted mean over seeds and images
        reps.append(parts[0] if shared else parts[0] - parts[1])
    return 100.0 * np.concatenate(reps)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same images: `only_a` images right for A alone, `only_b`
    for B alone; `p` the two-sided exact binomial p-value of only_a among only_a + only_b (1 when both are 0)."""
    n: int
    acc_a: float
    acc_b: float
    only_a: int
    only_b: int
    p: float


def mcnemar(a, b) -> McNemar:
    """McNemar's exact test between per-image correctness vectors a and b (bool, same images, same order)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"per-image vectors of shapes {a.shape} and {b.shape} do not pair")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemar(len(a), 100.0 * a.mean(), 100.0 * b.mean(), only_a, only_b, p)
