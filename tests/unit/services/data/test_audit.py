"""Tests of the look-ahead audit and of custom features loaded from a user's module."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.config import Config, DataOptions
from services.data import audit as audit_module
from services.data import features as features_module
from services.data.audit import audit_bars, perturb_after
from services.data.bars import Bars, DataError
from services.data.features import FeaturePipeline, available_features
from services.data.options import FeatureOptions
from services.data.synthetic import generate_bars

PEEKING_MODULE = '''
import numpy as np

from services.data.features import FeatureContext, register_feature


@register_feature("next_return", warmup=1, uses=("close",))
def next_return(ctx: FeatureContext) -> np.ndarray:
    """Return the next bar's log return: one bar of look-ahead."""
    out = np.zeros(len(ctx))
    out[:-1] = np.diff(np.log(ctx.close))
    return out


@register_feature("past_return", warmup=1, uses=("close",))
def past_return(ctx: FeatureContext) -> np.ndarray:
    """Return the last bar's log return."""
    return ctx.log_return(1)


def unregistered(ctx: FeatureContext) -> np.ndarray:
    """Return the close, but nobody registered it."""
    return ctx.close
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Write a user's feature module on sys.path; its registrations vanish after the test."""
    name = "user_features_for_audit"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PEEKING_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(features_module, "_REGISTRY", dict(features_module._REGISTRY))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def bars() -> Bars:
    return Bars.from_frame(generate_bars(900, seed=3))


def config_with(features: FeatureOptions, **env: object) -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        data=DataOptions(features=features),
        env=dataclasses.replace(base.env, window=16, episode_length=64, **env),  # type: ignore[arg-type]
    )


def test_the_built_in_features_show_no_look_ahead(bars: Bars) -> None:
    config = config_with(FeatureOptions(names=available_features()))

    report = audit_bars(bars, config, cuts=4, seed=1)

    assert report.leaks == ()
    assert report.summary().startswith(f"no look-ahead found (4 cuts, {len(available_features())} features")
    assert report.observations > 0 and report.eval_rows > 0


def test_a_custom_feature_that_peeks_one_bar_ahead_is_caught_by_name(bars: Bars, user_module: str) -> None:
    config = config_with(FeatureOptions(custom=(f"{user_module}:next_return", f"{user_module}:past_return")))

    report = audit_bars(bars, config, cuts=3, seed=2)

    found = {(leak.kind, leak.name) for leak in report.leaks}
    assert found == {("feature", "'next_return'"), ("observation", "'next_return'")}
    feature = next(leak for leak in report.leaks if leak.kind == "feature")
    assert feature.bar == feature.cut and feature.cuts == 3
    assert "look-ahead: feature 'next_return' at bar" in report.lines()[0]
    assert report.summary().startswith("look-ahead found: 2 leaking items (3 cuts")


def test_an_eval_record_that_reads_the_next_bar_is_reported_by_column(
    bars: Bars, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = audit_module._eval_pass

    def peeking_pass(*args: object) -> object:
        result = honest(*args)  # type: ignore[arg-type]
        records = result.records.copy()
        records[:-1, 2] = records[1:, 2]  # equity of each row taken from the next bar
        return dataclasses.replace(result, records=records)

    monkeypatch.setattr(audit_module, "_eval_pass", peeking_pass)

    report = audit_bars(bars, config_with(FeatureOptions()), cuts=2, seed=3)

    assert [(leak.kind, leak.name) for leak in report.leaks] == [("eval row", "equity")]


def test_changed_bars_keep_every_bar_up_to_the_cut_and_stay_valid(bars: Bars) -> None:
    cut = 500

    changed = perturb_after(bars, cut, np.random.default_rng(0))

    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(changed, name)[: cut + 1], getattr(bars, name)[: cut + 1])
        assert (getattr(changed, name)[cut + 1 :] != getattr(bars, name)[cut + 1 :]).all()
    assert (changed.high >= np.maximum(changed.open, changed.close)).all()
    assert (changed.low <= np.minimum(changed.open, changed.close)).all() and (changed.low > 0).all()


def test_changed_close_only_bars_stay_flat(bars: Bars) -> None:
    flat = Bars(bars.timestamp, bars.close, bars.close, bars.close, bars.close, bars.volume)

    changed = perturb_after(flat, 100, np.random.default_rng(0), close_only=True)

    assert (changed.open == changed.close).all() and (changed.high == changed.low).all()


def test_custom_features_come_after_the_named_ones_in_column_order(bars: Bars, user_module: str) -> None:
    options = FeatureOptions(names=("ret_1",), custom=(f"{user_module}:past_return",))

    pipeline = FeaturePipeline(options)
    table = pipeline.update(bars)

    assert pipeline.names == ("ret_1", "past_return") and pipeline.warmup == 1
    np.testing.assert_array_equal(table[:, 0], table[:, 1])


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("no_such_module_here:f", "cannot import no_such_module_here"),
        ("{module}:missing", "has no missing"),
        ("{module}:unregistered", "unregistered is not registered: decorate it with @register_feature"),
    ],
)
def test_a_custom_feature_that_cannot_be_loaded_is_refused_naming_the_key(
    user_module: str, path: str, reason: str
) -> None:
    options = FeatureOptions(custom=(path.format(module=user_module),))

    with pytest.raises(DataError, match=r"^data\.features\.custom: .*" + reason):
        FeaturePipeline(options)


def test_a_custom_feature_that_repeats_a_named_one_is_refused(user_module: str) -> None:
    path = f"{user_module}:past_return"
    features_module.custom_feature(path)  # importing the module registers past_return by name
    options = FeatureOptions(names=("past_return",), custom=(path,))

    with pytest.raises(DataError, match=r"'past_return' is also in data\.features\.names"):
        FeaturePipeline(options)


@pytest.mark.parametrize("custom", [("no_colon",), ("a b:c",), ("mod:",), ("m:f", "m:f"), "m:f"])
def test_custom_paths_that_are_not_module_function_are_refused_at_load(custom: object) -> None:
    with pytest.raises(ValueError, match=r"FeatureOptions\.custom"):
        FeatureOptions(custom=custom)  # type: ignore[arg-type]
