"""Tests of the study's bookkeeping (which trials count, retries, surplus) and of its report's numbers."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from services.data.options import SplitOptions
from services.data.splits import lockbox_start, split_ranges
from services.experiments import stats
from services.experiments import storage as storage_module
from services.experiments.study import counted, finished, retried_numbers
from services.experiments.study_report import compute_statistics


def trial(
    number: int, state: TrialState, value: float | None = None, *, seed: int = 0, **attrs: object
) -> FrozenTrial:
    system = attrs.pop("system", {})
    made = create_trial(
        state=state,
        value=value,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs=dict(attrs),
        system_attrs=dict(system),  # type: ignore[arg-type]
    )
    made.number = number
    return made


def returns(seed: int, drift: float = 0.0) -> list[float]:
    return list(np.random.default_rng(seed).normal(drift, 0.01, size=256))


def test_a_retried_trial_and_a_surplus_one_are_not_counted_but_its_retry_is() -> None:
    trials = [
        trial(0, TrialState.COMPLETE, 1.0),
        trial(1, TrialState.FAIL),
        trial(2, TrialState.PRUNED),
        trial(3, TrialState.FAIL, surplus=True),
        trial(4, TrialState.COMPLETE, 0.5, system={"failed_trial": 1, "retry_history": [1]}),
        trial(5, TrialState.FAIL),
    ]

    searched = counted(trials)

    assert [t.number for t in searched] == [0, 2, 4, 5]
    assert retried_numbers(trials) == {1}
    assert [t.number for t in finished(trials)] == [0, 2, 4]


def test_the_report_deflates_the_best_trial_with_every_counted_trial() -> None:
    trials = [
        trial(i, TrialState.COMPLETE, float(i), returns=returns(i), seed_sharpes=[0.1 * i, 0.2 * i, 0.3])
        for i in range(4)
    ]
    trials.append(trial(4, TrialState.PRUNED))

    numbers = compute_statistics(trials)

    sharpes = [stats.sharpe_ratio(returns(i)) for i in range(4)]
    expected = stats.deflated_sharpe_ratio(returns(3), sharpes, n_trials=5)
    assert numbers.best is not None and numbers.best.number == 3
    assert numbers.dsr == expected
    assert numbers.pbo is not None and numbers.pbo.n_trials == 4
    assert numbers.seeds is not None and numbers.seeds.n_seeds == 3
    assert numbers.line == stats.verdict(expected.dsr, 5, numbers.pbo.pbo)


def test_the_report_gives_no_verdict_before_two_trials_complete() -> None:
    trials = [
        trial(0, TrialState.COMPLETE, 1.0, returns=returns(0), seed_sharpes=[1.0]),
        trial(1, TrialState.PRUNED),
    ]

    numbers = compute_statistics(trials)

    assert numbers.dsr is None and numbers.pbo is None and numbers.seeds is None
    assert numbers.line.startswith("no verdict")


def test_the_lockbox_is_cut_off_every_split_and_is_the_eval_window_of_the_lockbox_session() -> None:
    options = SplitOptions(train_fraction=0.8, lockbox_fraction=0.15)
    lockbox = SplitOptions(train_fraction=1.0 - 0.15)

    trial_split = split_ranges(1033, options, warmup=33)
    lockbox_split = split_ranges(1033, lockbox, warmup=33)

    start = lockbox_start(1033, options, warmup=33)
    assert start == 33 + 850
    assert trial_split.eval.stop == start
    assert trial_split.train.stop == 33 + 680
    assert lockbox_split.eval == range(start, 1033)


def test_optuna_stores_a_categorical_list_choice_as_its_json_text() -> None:
    study = optuna.create_study()

    study.enqueue_trial({"model.net_arch": "[8]"})
    chosen = study.ask().suggest_categorical("model.net_arch", ["[8]", "[16]"])

    assert chosen == "[8]"


def test_a_worker_that_loses_the_race_to_create_the_tables_opens_the_storage_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import IntegrityError

    calls: list[str] = []

    def storage(url: str, **kwargs: object) -> str:
        calls.append(url)
        if len(calls) == 1:
            raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
        return "opened"

    monkeypatch.setattr(storage_module, "RDBStorage", storage)

    assert storage_module.storage_for("sqlite:///x.db") == "opened"
    assert len(calls) == 2


def test_a_storage_that_keeps_failing_its_tables_is_one_error() -> None:
    from sqlalchemy.exc import IntegrityError

    def storage(url: str, **kwargs: object) -> str:
        raise IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage_module, "RDBStorage", storage)
        with pytest.raises(storage_module.StudyError, match=r"cannot open the storage: .*duplicate key"):
            storage_module.storage_for("sqlite:///x.db", attempts=2)
