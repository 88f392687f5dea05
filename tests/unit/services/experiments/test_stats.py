"""Tests of the study statistics: the papers' worked examples, hand cases and independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.experiments.stats import (
    DSR_THRESHOLD,
    bootstrap_interval,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    interquartile_mean,
    normal_cdf,
    normal_ppf,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    return_moments,
    seed_summary,
    sharpe_ratio,
    verdict,
)

# Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", section "A numerical example": N = 100
# trials, V[SR_n] = 1/2 (annualised), T = 1250 daily returns (5 years of 250 days), skew -3, kurtosis 10,
# best annualised Sharpe ratio 2.5; the paper prints SR* = sqrt(1/2 / 250) * (...) ~ 0.1132 and
# DSR ~ 0.9004 (below 0.95: the strategy is declined).
PAPER_DAYS_PER_YEAR = 250
PAPER_N_TRIALS = 100
PAPER_SHARPE_VARIANCE = 0.5 / PAPER_DAYS_PER_YEAR
PAPER_SHARPE = 2.5 / math.sqrt(PAPER_DAYS_PER_YEAR)
PAPER_T = 1250
PAPER_SKEW = -3.0
PAPER_KURTOSIS = 10.0


def _psr_by_hand(sharpe: float, benchmark: float, n: int, skew: float, kurtosis: float) -> float:
    """Return the PSR formula evaluated term by term, with math.erfc as the normal CDF."""
    sigma = math.sqrt((1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe) / (n - 1))
    return 0.5 * math.erfc(-((sharpe - benchmark) / sigma) / math.sqrt(2.0))


def _brute_force_cscv(matrix: np.ndarray, n_blocks: int) -> tuple[list[float], list[int]]:
    """Return the logits and selections of CSCV by explicit loops over the splits."""
    n_rows, n_trials = matrix.shape
    size = n_rows // n_blocks
    blocks = [matrix[i * size : (i + 1) * size] for i in range(n_blocks)]
    logits, selections = [], []
    for chosen in itertools.combinations(range(n_blocks), n_blocks // 2):
        train = np.concatenate([blocks[i] for i in chosen])
        test = np.concatenate([blocks[i] for i in range(n_blocks) if i not in chosen])
        train_sr = [train[:, j].mean() / train[:, j].std(ddof=1) for j in range(n_trials)]
        test_sr = [test[:, j].mean() / test[:, j].std(ddof=1) for j in range(n_trials)]
        best = int(np.argmax(train_sr))
        rank = 1 + sorted(test_sr).index(test_sr[best])
        logits.append(math.log(rank / (n_trials + 1 - rank)))
        selections.append(best)
    return logits, selections


def _blocks_of_two(means: list[list[float]]) -> np.ndarray:
    """Return a matrix whose block b is two rows, means[b][j] - 0.01 and means[b][j] + 0.01 in column j."""
    rows = []
    for block in means:
        rows.append([m - 0.01 for m in block])
        rows.append([m + 0.01 for m in block])
    return np.array(rows)


def test_the_normal_quantile_matches_published_values() -> None:
    assert normal_ppf(0.5) == 0.0
    assert normal_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-14)
    assert normal_ppf(0.99) == pytest.approx(2.326347874040841, abs=1e-14)
    assert normal_ppf(0.001) == pytest.approx(-3.090232306167814, abs=1e-13)
    assert normal_ppf(1e-10) == pytest.approx(-6.361340902404056, abs=1e-12)


def test_the_normal_cdf_matches_published_values_and_inverts_the_quantile() -> None:
    assert normal_cdf(0.0) == 0.5
    assert normal_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-15)
    assert normal_cdf(-10.0) == pytest.approx(7.619853024160527e-24, rel=1e-12)
    for p in (1e-12, 0.01, 0.3, 0.7, 0.999):
        assert normal_cdf(normal_ppf(p)) == pytest.approx(p, rel=1e-12)


def test_a_quantile_outside_the_open_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="0 < p < 1"):
        normal_ppf(1.0)


def test_the_expected_maximum_sharpe_of_the_papers_example_is_0_1132() -> None:
    benchmark = expected_max_sharpe(PAPER_N_TRIALS, PAPER_SHARPE_VARIANCE)

    assert benchmark == pytest.approx(0.1132, abs=5e-5)


def test_the_deflated_sharpe_ratio_of_the_papers_example_is_0_9004() -> None:
    benchmark = expected_max_sharpe(PAPER_N_TRIALS, PAPER_SHARPE_VARIANCE)

    dsr = probabilistic_sharpe_ratio(PAPER_SHARPE, benchmark, PAPER_T, PAPER_SKEW, PAPER_KURTOSIS)

    assert dsr == pytest.approx(0.9004, abs=5e-5)
    assert dsr < DSR_THRESHOLD


def test_the_expected_maximum_is_the_formula_with_euler_mascheroni() -> None:
    n, variance = 20, 0.003
    by_hand = math.sqrt(variance) * (
        (1 - 0.5772156649015329) * 1.6448536269514722 + 0.5772156649015329 * normal_ppf(1 - 1 / (n * math.e))
    )

    assert expected_max_sharpe(n, variance) == pytest.approx(by_hand, rel=1e-12)


def test_the_expected_maximum_matches_a_monte_carlo_of_random_trials_sharpe_ratios() -> None:
    rng = np.random.default_rng(7)
    studies, trials, bars = 800, 50, 200
    returns = rng.normal(0.0, 0.01, size=(studies, trials, bars))
    sharpes = returns.mean(axis=2) / returns.std(axis=2, ddof=1)
    variance = float(np.mean(np.var(sharpes, axis=1, ddof=1)))

    formula = expected_max_sharpe(trials, variance)

    # The formula overstates the exact expectation by about 1 % at N = 50 (see the integral test).
    assert float(np.mean(sharpes.max(axis=1))) == pytest.approx(formula, rel=0.04)


def test_the_expected_maximum_is_close_to_the_exact_expectation_of_the_largest_normal() -> None:
    x = np.linspace(-12.0, 12.0, 48_001)
    density = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    errors = []

    for n in (10, 100, 1000):
        exact = float(np.trapezoid(x * n * density * cdf ** (n - 1), x))
        errors.append(expected_max_sharpe(n, 1.0) / exact - 1.0)

    assert all(0.0 < e < 0.03 for e in errors)
    assert errors == sorted(errors, reverse=True)


def test_one_trial_is_benchmarked_at_zero() -> None:
    assert expected_max_sharpe(1, 0.5) == 0.0


def test_the_probabilistic_sharpe_ratio_matches_the_formula_evaluated_by_hand() -> None:
    cases = [(0.1, 0.0, 250, 0.0, 3.0), (0.05, 0.02, 1000, -0.7, 6.5), (-0.03, 0.01, 60, 1.2, 4.0)]

    for sharpe, benchmark, n, skew, kurtosis in cases:
        psr = probabilistic_sharpe_ratio(sharpe, benchmark, n, skew, kurtosis)

        assert psr == pytest.approx(_psr_by_hand(sharpe, benchmark, n, skew, kurtosis), rel=1e-12)


def test_the_probabilistic_sharpe_ratio_exceeds_0_95_in_5_percent_of_samples_at_the_benchmark() -> None:
    rng = np.random.default_rng(11)
    true_sharpe, bars, samples = 0.05, 250, 4000
    returns = rng.normal(true_sharpe * 0.01, 0.01, size=(samples, bars))
    sharpes = returns.mean(axis=1) / returns.std(axis=1, ddof=1)

    psr = np.array([probabilistic_sharpe_ratio(float(s), true_sharpe, bars, 0.0, 3.0) for s in sharpes])

    assert float(np.mean(psr > 0.95)) == pytest.approx(0.05, abs=0.015)


def test_an_excess_kurtosis_passed_for_a_pearson_one_is_refused() -> None:
    with pytest.raises(ValueError, match="Pearson"):
        probabilistic_sharpe_ratio(0.1, 0.0, 250, 0.0, 0.0)


def test_return_moments_use_pearson_kurtosis_and_per_bar_sharpe() -> None:
    returns = np.array([0.01, -0.02, 0.03, 0.0, 0.05])
    centred = returns - returns.mean()
    m2 = np.mean(centred**2)

    moments = return_moments(returns)

    assert moments.n_returns == 5
    assert moments.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1))
    assert moments.skew == pytest.approx(np.mean(centred**3) / m2**1.5)
    assert moments.kurtosis == pytest.approx(np.mean(centred**4) / m2**2)


def test_normal_returns_have_kurtosis_near_three() -> None:
    returns = np.random.default_rng(3).normal(0.0, 1.0, 200_000)

    moments = return_moments(returns)

    assert moments.kurtosis == pytest.approx(3.0, abs=0.05)
    assert moments.skew == pytest.approx(0.0, abs=0.02)


def test_flat_returns_have_sharpe_zero_and_normal_moments() -> None:
    moments = return_moments(np.zeros(10))

    assert (moments.sharpe, moments.skew, moments.kurtosis) == (0.0, 0.0, 3.0)
    assert sharpe_ratio(np.full(10, 0.001)) == 0.0


def test_the_deflated_sharpe_ratio_of_a_best_trial_is_its_psr_at_the_expected_maximum() -> None:
    rng = np.random.default_rng(5)
    best = rng.normal(0.002, 0.01, 500)
    sharpes = np.array([0.1, -0.02, 0.05, 0.03, sharpe_ratio(best)])
    moments = return_moments(best)
    benchmark = expected_max_sharpe(12, float(np.var(sharpes, ddof=1)))

    result = deflated_sharpe_ratio(best, sharpes, n_trials=12)

    assert result.n_trials == 12
    assert result.benchmark == pytest.approx(benchmark)
    assert result.dsr == pytest.approx(
        _psr_by_hand(moments.sharpe, benchmark, 500, moments.skew, moments.kurtosis), rel=1e-10
    )


def test_counting_pruned_trials_lowers_the_deflated_sharpe_ratio() -> None:
    best = np.random.default_rng(6).normal(0.002, 0.01, 500)
    sharpes = [0.1, -0.02, 0.05, 0.03]

    finished_only = deflated_sharpe_ratio(best, sharpes)
    all_trials = deflated_sharpe_ratio(best, sharpes, n_trials=40)

    assert all_trials.dsr < finished_only.dsr
    assert finished_only.n_trials == 4


def test_fewer_trials_than_sharpe_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="n_trials 2"):
        deflated_sharpe_ratio(np.ones(5) + np.arange(5), [0.1, 0.2, 0.3], n_trials=2)


def test_a_hand_enumerated_two_block_split_gives_its_logits() -> None:
    # Bar pairs m -/+ 0.01 have Sharpe m / (0.01 * sqrt(2)). Block 0 means: 0.02, 0.01, 0.00; block 1:
    # 0.01, 0.00, 0.02. Split 1 (IS block 0) picks trial 0, second of three in block 1: w = 2/4,
    # lambda = 0. Split 2 (IS block 1) picks trial 2, last in block 0: w = 1/4, lambda = ln(1/3).
    matrix = _blocks_of_two([[0.02, 0.01, 0.00], [0.01, 0.00, 0.02]])

    result = probability_of_backtest_overfitting(matrix, n_blocks=2)

    assert result.n_splits == 2
    assert result.selected.tolist() == [0, 2]
    assert result.logits == pytest.approx([0.0, math.log(1 / 3)], abs=1e-12)
    assert result.pbo == 1.0
    pair_std = 0.01 * math.sqrt(2)
    assert result.in_sample_sharpe == pytest.approx([0.02 / pair_std, 0.02 / pair_std])
    assert result.out_of_sample_sharpe == pytest.approx([0.01 / pair_std, 0.0], abs=1e-12)


def test_a_trial_best_in_every_block_is_never_overfit() -> None:
    matrix = _blocks_of_two([[0.03, 0.01, 0.00], [0.02, 0.00, 0.01]])

    result = probability_of_backtest_overfitting(matrix, n_blocks=2)

    assert result.logits == pytest.approx([math.log(3), math.log(3)])
    assert result.pbo == 0.0


def test_tied_trials_share_their_mean_rank_and_the_first_is_selected() -> None:
    # Trials 0 and 1 are identical and best in both blocks: ranks 2 and 3 out of sample, 2.5 each.
    matrix = _blocks_of_two([[0.02, 0.02, 0.00], [0.03, 0.03, 0.01]])

    result = probability_of_backtest_overfitting(matrix, n_blocks=2)

    assert result.selected.tolist() == [0, 0]
    assert result.logits == pytest.approx([math.log(2.5 / 1.5)] * 2)


def test_four_blocks_match_a_brute_force_enumeration_of_the_splits() -> None:
    matrix = np.random.default_rng(13).normal(0.0, 0.01, size=(40, 3))
    logits, selections = _brute_force_cscv(matrix, 4)

    result = probability_of_backtest_overfitting(matrix, n_blocks=4)

    assert result.n_splits == math.comb(4, 2) == 6
    assert result.selected.tolist() == selections
    assert result.logits == pytest.approx(logits, abs=1e-12)
    assert result.pbo == pytest.approx(np.mean(np.array(logits) <= 0.0))


def test_sixteen_blocks_give_c_16_8_symmetric_splits() -> None:
    matrix = np.random.default_rng(17).normal(0.0, 0.01, size=(163, 5))

    result = probability_of_backtest_overfitting(matrix)

    assert result.n_splits == math.comb(16, 8) == 12870
    assert result.bars_used == 160
    assert np.array_equal(result.logits, probability_of_backtest_overfitting(matrix[3:]).logits)
    assert result.logits.shape == result.in_sample_sharpe.shape == result.out_of_sample_sharpe.shape


def test_pure_noise_trials_are_overfit_half_of_the_time_and_lose_their_in_sample_edge() -> None:
    # One noise matrix gives a PBO anywhere in about 0.15 to 0.8 (its splits share the data), so 20 are
    # averaged; out of sample the selected trial's Sharpe ratio is that of fresh noise, mean 0.
    rng = np.random.default_rng(19)

    results = [probability_of_backtest_overfitting(rng.normal(0.0, 0.01, (400, 40)), 10) for _ in range(20)]

    assert float(np.mean([r.pbo for r in results])) == pytest.approx(0.5, abs=0.08)
    assert float(np.mean([r.in_sample_sharpe.mean() for r in results])) > 0.1
    assert float(np.mean([r.out_of_sample_sharpe.mean() for r in results])) == pytest.approx(0.0, abs=0.02)


def test_one_trial_with_a_real_edge_is_never_overfit() -> None:
    rng = np.random.default_rng(23)
    matrix = rng.normal(0.0, 0.01, (1600, 50))
    matrix[:, 7] += 0.003

    result = probability_of_backtest_overfitting(matrix)

    assert result.pbo == 0.0
    assert set(result.selected.tolist()) == {7}
    assert result.probability_of_loss == 0.0


def test_an_odd_number_of_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(np.zeros((30, 3)), n_blocks=3)


def test_the_iqm_cuts_a_quarter_of_the_scores_from_each_end() -> None:
    # Sorted 1 2 | 3 4 5 7 | 8 100: int(8 / 4) = 2 cut from each end; of five int(1.25) = 1; of three none.
    assert interquartile_mean([8.0, 1.0, 3.0, 100.0, 2.0, 5.0, 4.0, 7.0]) == pytest.approx(4.75)
    assert interquartile_mean([1.0, 2.0, 3.0, 4.0, 50.0]) == pytest.approx(3.0)
    assert interquartile_mean([1.0, 2.0, 9.0]) == pytest.approx(4.0)


def test_the_iqm_matches_rliables_own_test_scores() -> None:
    # rliable tests/rliable/metrics_test.py: aggregate_iqm of these run x task matrices is 1.5 and 2.
    assert interquartile_mean(np.array([[1, 2], [2, 2], [1, 1], [2, 1]]).ravel()) == 1.5
    assert interquartile_mean(np.array([[1, 1], [2, 2], [3, 3]]).ravel()) == 2.0


def test_a_bootstrap_interval_is_the_same_for_the_same_seed() -> None:
    scores = np.random.default_rng(31).normal(1.0, 0.5, 10)

    first = bootstrap_interval(scores, "iqm", seed=4, resamples=2000)
    again = bootstrap_interval(scores, "iqm", seed=4, resamples=2000)
    other = bootstrap_interval(scores, "iqm", seed=5, resamples=2000)

    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.low <= first.estimate <= first.high


def test_a_bootstrap_interval_of_a_normal_sample_contains_its_true_mean() -> None:
    scores = np.random.default_rng(37).normal(2.0, 1.0, 20)

    summary = seed_summary(scores, seed=1, resamples=4000)

    assert summary.mean.low < 2.0 < summary.mean.high
    assert summary.iqm.low < 2.0 < summary.iqm.high
    assert summary.mean.estimate == pytest.approx(float(np.mean(scores)))
    assert summary.n_seeds == 20


def test_bootstrap_intervals_of_normal_samples_cover_the_true_mean_near_95_percent() -> None:
    rng = np.random.default_rng(41)
    samples = rng.normal(0.0, 1.0, size=(300, 12))

    covered = [
        (interval.low < 0.0 < interval.high)
        for interval in (bootstrap_interval(s, "mean", seed=i, resamples=1000) for i, s in enumerate(samples))
    ]

    assert 0.87 <= float(np.mean(covered)) <= 0.99


def test_a_stratified_bootstrap_resamples_runs_within_each_task() -> None:
    scores = np.array([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]])

    interval = bootstrap_interval(scores, "mean", seed=0, resamples=500)

    assert (interval.low, interval.estimate, interval.high) == (50.0, 50.0, 50.0)


def test_a_bootstrap_of_one_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 runs"):
        bootstrap_interval([1.0], "mean", seed=0)


def test_the_verdict_says_an_edge_is_distinguishable_above_the_threshold() -> None:
    line = verdict(0.97, 100)

    assert line == (
        "the best trial's edge is distinguishable from the best of 100 random trials (DSR 0.97 >= 0.95)"
    )


def test_the_verdict_says_an_edge_is_not_distinguishable_below_the_threshold() -> None:
    line = verdict(0.41, 20, pbo=0.62)

    assert line == (
        "the best trial's edge is not distinguishable from the best of 20 random trials (DSR 0.41 < 0.95); "
        "the search is likely overfit (PBO 0.62 >= 0.50)"
    )


def test_the_verdict_never_rounds_a_dsr_up_to_the_threshold() -> None:
    line = verdict(0.9496, 5, pbo=0.1)

    assert "(DSR 0.9496 < 0.95); the search is not likely overfit (PBO 0.10 < 0.50)" in line
