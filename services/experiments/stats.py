"""Tell an edge from luck: deflated Sharpe ratio, probability of backtest overfitting, seed intervals.

Every formula, unit and convention is in docs/STATISTICS.md. Sharpe ratios here are per bar (mean bar
return over its sample standard deviation, risk-free rate 0), never annualised: divide an annualised
Sharpe ratio by sqrt(bars_per_year) before passing it in. Kurtosis is Pearson's (a normal distribution
has 3), not the excess kurtosis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

EULER_MASCHERONI = 0.5772156649015329
"""The constant gamma of the expected maximum of N Sharpe ratios."""
DSR_THRESHOLD = 0.95
"""A deflated Sharpe ratio at or above this tells the best trial's edge from the best of N lucky ones."""
PBO_THRESHOLD = 0.5
"""A probability of backtest overfitting at or above this calls the search likely overfit."""
DEFAULT_BLOCKS = 16
"""S, the number of blocks the performance matrix is cut into for CSCV (the paper's example)."""
DEFAULT_RESAMPLES = 10_000
"""B, the number of bootstrap resamples of an interval."""
DEFAULT_CONFIDENCE = 0.95
"""Coverage of a bootstrap interval."""
ZERO_TOLERANCE = 1e-12
"""A standard deviation at or below this is zero, as in docs/METRICS.md."""
# Splits evaluated at once by the CSCV: bounds the memory to a few (chunk x trials) arrays.
_SPLITS_PER_CHUNK = 1024
_STANDARD_NORMAL = NormalDist()

Statistic = Literal["iqm", "mean"]


def normal_cdf(x: float) -> float:
    """Return Z(x), the standard normal distribution function, accurate far into both tails."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """Return Z^-1(p), the standard normal quantile, for 0 < p < 1 (Wichura's AS241)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a normal quantile needs 0 < p < 1, got {p}")
    return _STANDARD_NORMAL.inv_cdf(p)


def sharpe_ratio(returns: ArrayLike) -> float:
    """Return the per-bar Sharpe ratio mean(r) / std(r, ddof=1), 0.0 without volatility."""
    r = _returns(returns)
    std = float(np.std(r, ddof=1))
    return float(np.mean(r)) / std if std > ZERO_TOLERANCE else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnMoments:
    """Hold what the probabilistic Sharpe ratio needs of a series of bar returns."""

    n_returns: int
    """T, the number of bar returns."""
    sharpe: float
    """Per-bar Sharpe ratio, mean over sample std (ddof=1)."""
    skew: float
    """Skewness m3 / m2^1.5 (central moments with divisor T)."""
    kurtosis: float
    """Pearson kurtosis m4 / m2^2 (normal = 3); 3.0 with skew 0.0 for returns without volatility."""


def return_moments(returns: ArrayLike) -> ReturnMoments:
    """Return the count, per-bar Sharpe ratio, skewness and Pearson kurtosis of bar returns."""
    r = _returns(returns)
    std = float(np.std(r, ddof=1))
    if std <= ZERO_TOLERANCE:
        return ReturnMoments(n_returns=r.size, sharpe=0.0, skew=0.0, kurtosis=3.0)
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    skew = float(np.mean(centred**3)) / m2**1.5
    kurtosis = float(np.mean(centred**4)) / m2**2
    return ReturnMoments(n_returns=r.size, sharpe=float(np.mean(r)) / std, skew=skew, kurtosis=kurtosis)


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n_returns: int, skew: float, kurtosis: float
) -> float:
    """Return PSR(benchmark), the probability that the true per-bar Sharpe ratio exceeds benchmark.

    Args:
        sharpe: SR_hat, the observed per-bar Sharpe ratio.
        benchmark: SR*, the per-bar Sharpe ratio to beat.
        n_returns: T, the number of bar returns SR_hat was estimated from (at least 2).
        skew: skewness of those returns.
        kurtosis: their Pearson kurtosis (normal = 3), not the excess kurtosis; any distribution has
            kurtosis >= skew^2 + 1, and a smaller value is refused as a likely excess kurtosis.
    """
    if n_returns < 2:
        raise ValueError(f"the probabilistic Sharpe ratio needs at least 2 returns, got {n_returns}")
    if not all(math.isfinite(v) for v in (sharpe, benchmark, skew, kurtosis)):
        raise ValueError("the probabilistic Sharpe ratio needs finite inputs")
    if kurtosis < skew**2 + 1.0 - 1e-9 * max(1.0, kurtosis):
        raise ValueError(
            f"kurtosis {kurtosis} is below skew^2 + 1 = {skew**2 + 1.0}: pass Pearson's kurtosis "
            "(normal = 3), not the excess kurtosis"
        )
    # Non-negative for any moments that pass the check above: it is at least (1 - skew * sharpe / 2)^2.
    variance = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    z = (sharpe - benchmark) * math.sqrt(n_returns - 1) / math.sqrt(max(variance, ZERO_TOLERANCE))
    return normal_cdf(z)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Return E[max SR_n], the expected largest per-bar Sharpe ratio of n_trials trials without skill.

    The approximation of Bailey and Lopez de Prado (2014) for N independent trials whose Sharpe ratios
    are normal with mean 0; for one trial it is that mean, 0.0.

    Args:
        n_trials: N, every trial of the search, pruned and failed ones included.
        sharpe_variance: V[SR_n], the variance across trials of their per-bar Sharpe ratios.
    """
    if n_trials < 1:
        raise ValueError(f"the number of trials must be at least 1, got {n_trials}")
    if not (math.isfinite(sharpe_variance) and sharpe_variance >= 0.0):
        raise ValueError(f"the variance of the trials' Sharpe ratios must be >= 0, got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    quantiles = (1.0 - EULER_MASCHERONI) * normal_ppf(1.0 - 1.0 / n_trials) + EULER_MASCHERONI * normal_ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return math.sqrt(sharpe_variance) * quantiles


@dataclass(frozen=True, slots=True, kw_only=True)
class DeflatedSharpe:
    """Hold the deflated Sharpe ratio of a search's best trial and what it was computed from."""

    dsr: float
    """PSR(benchmark): the probability that the best trial's true Sharpe ratio beats the benchmark."""
    sharpe: float
    """SR_hat, the best trial's per-bar Sharpe ratio."""
    benchmark: float
    """SR* = E[max SR_n], the per-bar Sharpe ratio the best of n_trials trials reaches by luck."""
    n_trials: int
    """N, every trial of the search, pruned and failed ones included."""
    sharpe_variance: float
    """V[SR_n], the sample variance (ddof=1) of the trials' per-bar Sharpe ratios."""
    n_returns: int
    """T, the number of the best trial's bar returns."""
    skew: float
    """Skewness of the best trial's returns."""
    kurtosis: float
    """Pearson kurtosis (normal = 3) of the best trial's returns."""


def deflated_sharpe_ratio(
    best_returns: ArrayLike, trial_sharpes: ArrayLike, n_trials: int | None = None
) -> DeflatedSharpe:
    """Return the deflated Sharpe ratio of the best trial of a search (Bailey and Lopez de Prado, 2014).

    Args:
        best_returns: the bar returns of the selected trial.
        trial_sharpes: the per-bar Sharpe ratios of every trial that produced returns, the selected one
            included.
        n_trials: N, the number of trials of the search, pruned and failed ones included; at least
            len(trial_sharpes), which is the default.
    """
    sharpes = np.asarray(trial_sharpes, dtype=float).ravel()
    if not np.all(np.isfinite(sharpes)):
        raise ValueError("the trials' Sharpe ratios must be finite")
    n = sharpes.size if n_trials is None else n_trials
    if n < max(sharpes.size, 1):
        raise ValueError(f"n_trials {n} is below the {sharpes.size} trials that have a Sharpe ratio")
    if n > 1 and sharpes.size < 2:
        raise ValueError("the variance of the trials' Sharpe ratios needs at least 2 of them")
    variance = float(np.var(sharpes, ddof=1)) if sharpes.size >= 2 else 0.0
    moments = return_moments(best_returns)
    benchmark = expected_max_sharpe(n, variance)
    dsr = probabilistic_sharpe_ratio(
        moments.sharpe, benchmark, moments.n_returns, moments.skew, moments.kurtosis
    )
    return DeflatedSharpe(
        dsr=dsr,
        sharpe=moments.sharpe,
        benchmark=benchmark,
        n_trials=n,
        sharpe_variance=variance,
        n_returns=moments.n_returns,
        skew=moments.skew,
        kurtosis=moments.kurtosis,
    )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BacktestOverfitting:
    """Hold the probability of backtest overfitting and its per-split details, one row per split."""

    pbo: float
    """Share of the splits whose in-sample best trial has logit <= 0 out of sample."""
    logits: NDArray[np.float64] = field(repr=False)
    """lambda = ln(w / (1 - w)) of each split, w the selected trial's relative rank out of sample."""
    in_sample_sharpe: NDArray[np.float64] = field(repr=False)
    """Per-bar Sharpe ratio of each split's selected trial on its in-sample half."""
    out_of_sample_sharpe: NDArray[np.float64] = field(repr=False)
    """Per-bar Sharpe ratio of the same trial on the out-of-sample half."""
    selected: NDArray[np.int64] = field(repr=False)
    """Column of the trial selected in sample, per split."""
    n_trials: int
    """N, the number of columns."""
    n_blocks: int
    """S, the number of blocks of rows."""
    bars_used: int
    """Rows used: the last S * (T // S); the oldest T mod S rows are left out so blocks are equal."""

    @property
    def n_splits(self) -> int:
        """Return the number of splits, C(S, S/2)."""
        return int(self.logits.size)

    @property
    def probability_of_loss(self) -> float:
        """Return the share of splits whose selected trial has a negative out-of-sample Sharpe ratio."""
        return float(np.mean(self.out_of_sample_sharpe < 0.0))


def probability_of_backtest_overfitting(
    performance: ArrayLike, n_blocks: int = DEFAULT_BLOCKS
) -> BacktestOverfitting:
    """Return the probability of backtest overfitting by combinatorially symmetric cross-validation.

    Bailey, Borwein, Lopez de Prado and Zhu (2015): the rows are cut into n_blocks equal blocks; each
    choice of half the blocks is an in-sample set, the other half its out-of-sample set. The trial with
    the best in-sample per-bar Sharpe ratio (the first on a tie) is ranked among all trials out of
    sample (rank 1 the worst, ties sharing their mean rank), w = rank / (N + 1).

    Args:
        performance: a T x N matrix of bar returns, one row per bar (oldest first), one column per trial.
        n_blocks: S, even and at least 2; each half must hold at least 2 rows.
    """
    matrix = np.asarray(performance, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"the performance matrix must be T x N with N >= 2 trials, got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the performance matrix must be finite")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"the number of blocks must be even and at least 2, got {n_blocks}")
    n_rows, n_trials = matrix.shape
    block_rows = n_rows // n_blocks
    half_rows = block_rows * (n_blocks // 2)
    if half_rows < 2:
        raise ValueError(f"{n_rows} rows are too few for {n_blocks} blocks: each half needs 2 rows")
    used = matrix[n_rows - block_rows * n_blocks :]
    # Sums of squares are taken about each column's mean, so the variances keep their precision.
    shift = used.mean(axis=0)
    blocks = (used - shift).reshape(n_blocks, block_rows, n_trials)
    block_sums = blocks.sum(axis=1)
    block_squares = (blocks**2).sum(axis=1)
    halves = np.array(list(itertools.combinations(range(n_blocks), n_blocks // 2)))
    in_sample = np.zeros((halves.shape[0], n_blocks))
    in_sample[np.arange(halves.shape[0])[:, None], halves] = 1.0
    parts = [
        _select_and_rank(chunk, block_sums, block_squares, half_rows, shift)
        for chunk in np.array_split(in_sample, math.ceil(halves.shape[0] / _SPLITS_PER_CHUNK))
    ]
    logits, is_sharpe, oos_sharpe, selected = (np.concatenate(column) for column in zip(*parts, strict=True))
    return BacktestOverfitting(
        pbo=float(np.mean(logits <= 0.0)),
        logits=logits,
        in_sample_sharpe=is_sharpe,
        out_of_sample_sharpe=oos_sharpe,
        selected=selected,
        n_trials=n_trials,
        n_blocks=n_blocks,
        bars_used=int(used.shape[0]),
    )


def _select_and_rank(
    in_sample: NDArray[np.float64],
    block_sums: NDArray[np.float64],
    block_squares: NDArray[np.float64],
    half_rows: int,
    shift: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Return logit, in-sample and out-of-sample Sharpe ratio and column of each split's selected trial."""
    out_of_sample = 1.0 - in_sample
    is_sharpe = _sharpe_from_sums(in_sample @ block_sums, in_sample @ block_squares, half_rows, shift)
    oos_sums, oos_squares = out_of_sample @ block_sums, out_of_sample @ block_squares
    oos_sharpe = _sharpe_from_sums(oos_sums, oos_squares, half_rows, shift)
    rows = np.arange(in_sample.shape[0])
    selected = np.argmax(is_sharpe, axis=1)
    chosen = oos_sharpe[rows, selected][:, None]
    rank = 1.0 + np.sum(oos_sharpe < chosen, axis=1) + 0.5 * (np.sum(oos_sharpe == chosen, axis=1) - 1)
    logits = np.log(rank / (block_sums.shape[1] + 1.0 - rank))
    return logits, is_sharpe[rows, selected], oos_sharpe[rows, selected], selected


def _sharpe_from_sums(
    sums: NDArray[np.float64], squares: NDArray[np.float64], n: int, shift: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return per-bar Sharpe ratios from sums and sums of squares of returns less shift over n rows."""
    centred_mean = sums / n
    std = np.sqrt(np.maximum(squares - sums * centred_mean, 0.0) / (n - 1))
    safe = np.where(std > ZERO_TOLERANCE, std, 1.0)
    return np.where(std > ZERO_TOLERANCE, (centred_mean + shift) / safe, 0.0)


def interquartile_mean(scores: ArrayLike) -> float:
    """Return the IQM: the mean of the scores left once int(n / 4) are cut from each end.

    The semantics of scipy.stats.trim_mean(scores, 0.25), which rliable's aggregate_iqm calls: whole
    scores are cut, none weighted by a fraction; with fewer than 4 scores it is the plain mean.
    """
    return float(_iqm_rows(_scores(scores).reshape(1, -1))[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """Hold a point estimate and its bootstrap percentile interval."""

    estimate: float
    """The statistic of the scores themselves."""
    low: float
    """The (1 - confidence) / 2 quantile of the bootstrap distribution."""
    high: float
    """The (1 + confidence) / 2 quantile of the bootstrap distribution."""
    confidence: float
    """Nominal coverage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedSummary:
    """Hold the IQM and the mean of one configuration's seed scores, each with its interval."""

    n_seeds: int
    """Number of runs (rows of the scores)."""
    iqm: Interval
    """Interquartile mean of all scores."""
    mean: Interval
    """Mean of all scores."""
    resamples: int
    """B, the bootstrap resamples behind each interval."""


def bootstrap_interval(
    scores: ArrayLike,
    statistic: Statistic,
    *,
    seed: int,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Interval:
    """Return a stratified percentile bootstrap interval of the IQM or the mean of scores.

    Args:
        scores: one score per seed (1-D), or a runs x tasks matrix whose runs are resampled within each
            task (rliable's stratified bootstrap); the statistic is taken over all scores of a resample.
        statistic: "iqm" (interquartile_mean) or "mean".
        seed: seeds the resampling; the same seed gives the same interval.
        resamples: B, at least 1.
        confidence: nominal coverage, strictly between 0 and 1.
    """
    matrix = _scores(scores)
    matrix = matrix.reshape(-1, 1) if matrix.ndim == 1 else matrix
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 runs, got scores of shape {matrix.shape}")
    if resamples < 1:
        raise ValueError(f"the number of resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"the confidence must be strictly between 0 and 1, got {confidence}")
    if statistic not in _STATISTICS:
        raise ValueError(f"the statistic must be one of {sorted(_STATISTICS)}, got {statistic!r}")
    reduce = _STATISTICS[statistic]
    runs, tasks = matrix.shape
    picks = np.random.default_rng(seed).integers(0, runs, size=(resamples, runs, tasks))
    samples = np.take_along_axis(matrix[None, :, :], picks, axis=1).reshape(resamples, runs * tasks)
    low, high = np.quantile(reduce(samples), [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    estimate = float(reduce(matrix.reshape(1, -1))[0])
    return Interval(estimate=estimate, low=float(low), high=float(high), confidence=confidence)


def seed_summary(
    scores: ArrayLike,
    *,
    seed: int,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> SeedSummary:
    """Return the IQM and the mean of seed scores with their bootstrap intervals (same resamples)."""
    iqm = bootstrap_interval(scores, "iqm", seed=seed, resamples=resamples, confidence=confidence)
    mean = bootstrap_interval(scores, "mean", seed=seed, resamples=resamples, confidence=confidence)
    return SeedSummary(n_seeds=_scores(scores).shape[0], iqm=iqm, mean=mean, resamples=resamples)


def verdict(dsr: float, n_trials: int, pbo: float | None = None) -> str:
    """Return one line in plain words on whether the best trial's edge is more than luck.

    Args:
        dsr: the deflated Sharpe ratio of the best trial.
        n_trials: N, the number of trials it was deflated for.
        pbo: the probability of backtest overfitting of the search, when it was computed.
    """
    if not 0.0 <= dsr <= 1.0:
        raise ValueError(f"a deflated Sharpe ratio is a probability, got {dsr}")
    others = "a random trial" if n_trials == 1 else f"the best of {n_trials} random trials"
    is_or_not = "is" if dsr >= DSR_THRESHOLD else "is not"
    comparison = _shown(dsr, DSR_THRESHOLD)
    line = f"the best trial's edge {is_or_not} distinguishable from {others} (DSR {comparison})"
    if pbo is None:
        return line
    if not 0.0 <= pbo <= 1.0:
        raise ValueError(f"a probability of backtest overfitting is a probability, got {pbo}")
    is_or_not = "is" if pbo >= PBO_THRESHOLD else "is not"
    return f"{line}; the search {is_or_not} likely overfit (PBO {_shown(pbo, PBO_THRESHOLD)})"


def _shown(value: float, threshold: float) -> str:
    """Return 'value >= threshold' or 'value < threshold', with the digits that keep the sign true."""
    decimals = 2
    while value < threshold and float(f"{value:.{decimals}f}") >= threshold and decimals < 12:
        decimals += 1
    relation = ">=" if value >= threshold else "<"
    return f"{value:.{decimals}f} {relation} {threshold:.2f}"


def _returns(returns: ArrayLike) -> NDArray[np.float64]:
    """Return bar returns as a finite 1-D float array of at least 2 values."""
    r = np.asarray(returns, dtype=float)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"bar returns must be 1-D with at least 2 values, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("bar returns must be finite")
    return r


def _scores(scores: ArrayLike) -> NDArray[np.float64]:
    """Return scores as a finite non-empty float array."""
    s = np.asarray(scores, dtype=float)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite and not empty")
    return s


def _iqm_rows(samples: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return the interquartile mean of each row."""
    n = samples.shape[1]
    cut = int(0.25 * n)
    return np.sort(samples, axis=1)[:, cut : n - cut].mean(axis=1)


def _mean_rows(samples: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return the mean of each row."""
    return samples.mean(axis=1)


_STATISTICS: dict[str, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    "iqm": _iqm_rows,
    "mean": _mean_rows,
}
