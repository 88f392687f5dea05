"""Audit a setup for look-ahead: change the bars after random cuts and find what moved at or before them.

For each cut bar c (drawn, seeded, in the eval window of the first episode) the bars after c are replaced
by a different but valid path (prices on another random walk, new wicks, gaps and volumes) and the whole
setup runs again on them exactly as the session runs it: the causal feature pipeline chunk by chunk,
train-window normalisation, the sequential eval env with a fixed seeded action sequence. Anything at or
before c that differs from the run on the original bars read a bar after c:

- a feature row <= c (compared bit for bit, NaN equal to NaN), named by the feature;
- an observation of a decision bar <= c, named by the feature (and its place in the window), the position
  or the unrealised PnL column;
- an eval record of a bar <= c (close, position, equity, buy-and-hold equity, cost): a fill or an eval
  row that saw the future.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from services.config import Config
from services.data.bars import Bars, infer_bars_per_year
from services.data.features import FeaturePipeline, source_features
from services.data.options import FeatureOptions
from services.data.reader import SourceReader
from services.data.splits import Normalizer, split_ranges
from services.env.factory import VecEnvFactory
from services.env.options import DEFAULT_BARS_PER_YEAR, min_bars, min_eval_bars, n_actions
from services.env.vec_env import VecTradingEnv

logger = logging.getLogger(__name__)

RECORD_COLUMNS = ("close", "position", "equity", "buy_and_hold", "cost")
"""The eval env's per-bar records the audit compares."""


@dataclass(frozen=True, slots=True)
class Leak:
    """One feature, observation column or eval column that changed at or before a cut."""

    kind: str
    """'feature', 'observation' or 'eval row'."""
    name: str
    """What changed: the feature's name, the state column or the record column."""
    cut: int
    """The first cut at which it changed: the bars after this one were changed."""
    bar: int
    """The changed bar nearest the cut (at or before it)."""
    time: str
    """That bar's time."""
    before: float
    """Its value on the original bars."""
    after: float
    """Its value on the changed bars."""
    where: str = ""
    """Where in an observation the feature changed (its place in the window)."""
    cuts: int = 1
    """How many cuts it changed at."""

    def line(self, total_cuts: int) -> str:
        """Return the leak in one line."""
        where = f" ({self.where})" if self.where else ""
        return (
            f"look-ahead: {self.kind} {self.name}{where} at bar {self.bar} ({self.time}) changed from "
            f"{self.before:.6g} to {self.after:.6g} when the bars after bar {self.cut} changed "
            f"({self.cuts} of {total_cuts} cuts)"
        )


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What an audit compared and every leak it found."""

    cuts: tuple[int, ...]
    """The cut bars, in order."""
    features: tuple[str, ...]
    """The features compared, in column order."""
    feature_rows: int
    """Feature rows compared over all cuts."""
    observations: int
    """Observations compared over all cuts."""
    eval_rows: int
    """Eval records compared over all cuts."""
    leaks: tuple[Leak, ...] = field(default_factory=tuple)
    """One entry per leaking feature, observation column or eval column."""

    def summary(self) -> str:
        """Return the one-line verdict."""
        counts = (
            f"{len(self.cuts)} cuts, {len(self.features)} features, {self.feature_rows:,} feature rows, "
            f"{self.observations:,} observations, {self.eval_rows:,} eval rows compared"
        )
        if not self.leaks:
            return f"no look-ahead found ({counts})"
        items = "item" if len(self.leaks) == 1 else "items"
        return f"look-ahead found: {len(self.leaks)} leaking {items} ({counts})"

    def lines(self) -> list[str]:
        """Return one line per leak."""
        return [leak.line(len(self.cuts)) for leak in self.leaks]


@dataclass(frozen=True, slots=True)
class _Pass:
    """Everything one run of the setup produced that the audit compares."""

    obs_bars: np.ndarray
    """The decision bar of each observation."""
    obs: np.ndarray
    """The observations, one row per decision bar."""
    rec_bars: np.ndarray
    """The bar of each eval record."""
    records: np.ndarray
    """The eval records, one column per RECORD_COLUMNS entry."""


def audit_source(config: Config, *, cuts: int = 5, seed: int = 0) -> AuditReport:
    """Read the config's source as the session does and audit the whole setup on its bars.

    Raises:
        DataError: the source cannot be read, a custom feature cannot be loaded, or the split does not fit.
    """
    reader = SourceReader(config.data.source)
    features = source_features(
        config.data.features, close_only=reader.close_only, has_volume=reader.has_volume
    )
    bars = Bars.concat(list(reader))
    return audit_bars(bars, config, features=features, close_only=reader.close_only, cuts=cuts, seed=seed)


def audit_bars(
    bars: Bars,
    config: Config,
    *,
    features: FeatureOptions | None = None,
    close_only: bool = False,
    cuts: int = 5,
    seed: int = 0,
) -> AuditReport:
    """Audit the config's features, observations and eval records on these bars at `cuts` random cuts.

    Args:
        features: the features to compute (default: the config's).
        close_only: the bars are flat at their close; the changed bars stay flat.
        seed: draws the cuts, the changed bars and the action sequence.
    """
    if cuts < 1:
        raise ValueError(f"cuts must be >= 1, got {cuts}")
    options = features or config.data.features
    rng = np.random.default_rng(seed)
    chunk_rows = config.data.source.chunk_rows
    table = _features(bars, options, chunk_rows)
    pipeline = FeaturePipeline(options)
    names, warmup = pipeline.names, pipeline.warmup
    env = config.env
    split = split_ranges(
        len(bars),
        config.data.split,
        timestamps_ns=bars.timestamp,
        warmup=warmup,
        min_train_bars=min_bars(env.window, env.episode_length),
        min_eval_bars=min_eval_bars(env.window),
    )
    context = max(split.eval.start - (env.window - 1), warmup)
    bars_per_year = infer_bars_per_year(bars.timestamp) if len(bars) >= 2 else 0.0
    actions = _actions(rng, config, split.eval.stop - context - env.window)

    def run(candidate: Bars, table: np.ndarray) -> _Pass:
        normalizer = Normalizer.fit(table, split.train, names=names)
        return _eval_pass(
            config, normalizer.apply(table), candidate, context, split.eval.stop, actions, bars_per_year
        )

    original = run(bars, table)
    candidates = np.arange(split.eval.start, split.eval.stop - 1)
    chosen = np.sort(rng.choice(candidates, size=min(cuts, len(candidates)), replace=False))
    found: dict[tuple[str, str], Leak] = {}
    rows = observations = records = 0
    for cut in chosen.tolist():
        changed = perturb_after(bars, cut, rng, close_only=close_only)
        changed_table = _features(changed, options, chunk_rows)
        other = run(changed, changed_table)
        leaks: list[Leak] = []
        rows += cut + 1
        for column, bar, before, after in _changes(table[: cut + 1], changed_table[: cut + 1]):
            leaks.append(Leak("feature", repr(names[column]), cut, bar, "", before, after))
        seen = original.obs_bars <= cut
        observations += int(seen.sum())
        for column, row, before, after in _changes(original.obs[seen], other.obs[seen]):
            name, where = _observation_column(column, names, env.window)
            leaks.append(
                Leak("observation", name, cut, int(original.obs_bars[row]), "", before, after, where)
            )
        kept = original.rec_bars <= cut
        records += int(kept.sum())
        for column, row, before, after in _changes(original.records[kept], other.records[kept]):
            leaks.append(
                Leak("eval row", RECORD_COLUMNS[column], cut, int(original.rec_bars[row]), "", before, after)
            )
        for leak in _nearest_per_name(leaks):
            key = (leak.kind, leak.name)
            if key in found:
                found[key] = dataclasses.replace(found[key], cuts=found[key].cuts + 1)
            else:
                found[key] = dataclasses.replace(leak, time=_time(bars.timestamp[leak.bar]))
    logger.info("audit: %d cuts, %d leaks", len(chosen), len(found))
    return AuditReport(
        cuts=tuple(chosen.tolist()),
        features=tuple(names),
        feature_rows=rows,
        observations=observations,
        eval_rows=records,
        leaks=tuple(found.values()),
    )


def perturb_after(bars: Bars, cut: int, rng: np.random.Generator, *, close_only: bool = False) -> Bars:
    """Return the bars with every bar after `cut` replaced by another valid one (same times).

    Closes follow a new random walk from the cut's close, opens gap from them, wicks and volumes are drawn
    again; high >= max(open, close) and low <= min(open, close) hold, and flat bars stay flat.
    """
    n = len(bars) - cut - 1
    if n <= 0:
        return bars
    later = slice(cut + 1, None)
    walk = np.exp(np.cumsum(rng.normal(0.0, 0.05, n)))
    close = bars.close.copy()
    close[later] = bars.close[later] * walk
    if close_only:
        open_, high, low = close.copy(), close.copy(), close.copy()
    else:
        open_, high, low = bars.open.copy(), bars.high.copy(), bars.low.copy()
        open_[later] = bars.open[later] * walk * np.exp(rng.normal(0.0, 0.01, n))
        top = np.maximum(np.maximum(bars.high[later] * walk, open_[later]), close[later])
        bottom = np.minimum(np.minimum(bars.low[later] * walk, open_[later]), close[later])
        high[later] = top * np.exp(np.abs(rng.normal(0.0, 0.005, n)))
        low[later] = bottom * np.exp(-np.abs(rng.normal(0.0, 0.005, n)))
    volume = bars.volume.copy()
    volume[later] = bars.volume[later] * np.exp(rng.normal(0.0, 0.3, n))
    return Bars(bars.timestamp, open_, high, low, close, volume)


def _features(bars: Bars, options: FeatureOptions, chunk_rows: int) -> np.ndarray:
    """Return the feature table of the bars, streamed in the reader's chunks as the store builds it."""
    pipeline = FeaturePipeline(options)
    blocks = [pipeline.update(bars.slice(i, i + chunk_rows)) for i in range(0, len(bars), chunk_rows)]
    return np.concatenate(blocks) if blocks else np.empty((0, len(pipeline.names)), dtype=np.float32)


def _actions(rng: np.random.Generator, config: Config, steps: int) -> np.ndarray:
    """Return a fixed action per eval step, drawn from the env's action set."""
    count = n_actions(config.env.action)
    if count:
        return rng.integers(0, count, size=steps).astype(np.int64)
    return rng.uniform(-1.0, 1.0, size=steps).astype(np.float32)


def _eval_pass(
    config: Config,
    features: np.ndarray,
    bars: Bars,
    start: int,
    stop: int,
    actions: np.ndarray,
    bars_per_year: float,
) -> _Pass:
    """Run the sequential eval env over bars [start, stop) with the fixed actions and keep what it showed."""
    factory = VecEnvFactory(config.env, seed=config.training.seed)
    env: VecTradingEnv = factory.create("eval", bars_per_year if bars_per_year > 0 else DEFAULT_BARS_PER_YEAR)
    env.update_data(
        np.ascontiguousarray(features[start:stop]),
        np.ascontiguousarray(bars.open[start:stop]),
        np.ascontiguousarray(bars.close[start:stop]),
    )
    first = start + config.env.window - 1
    observations = [env.reset().copy()]
    for action in actions:
        result = env.step(action.reshape(1))
        last = bool(result.truncated[0] or result.terminated[0])
        observations.append((result.terminal_obs if last else result.obs)[:1].copy())
    rec = env.records()
    return _Pass(
        obs_bars=np.arange(first, first + len(observations)),
        obs=np.concatenate(observations),
        rec_bars=rec.bar + start,
        records=np.column_stack([getattr(rec, name) for name in RECORD_COLUMNS]).astype(np.float64),
    )


def _observation_column(column: int, names: tuple[str, ...], window: int) -> tuple[str, str]:
    """Name an observation column: a feature and its place in the window, or a state column."""
    width = window * len(names)
    if column >= width:
        return ("position", "") if column == width else ("unrealised PnL", "")
    row, feature = divmod(column, len(names))
    return repr(names[feature]), f"t-{window - 1 - row} in the window"


def _changes(before: np.ndarray, after: np.ndarray) -> list[tuple[int, int, float, float]]:
    """Return (column, row, before, after) of each column that differs, at its last changed row.

    Values are compared exactly (NaN equal to NaN): a causal computation gives the same numbers from the
    same past bars, so even a last-bit difference came from a later bar.
    """
    same = (before == after) | (np.isnan(before) & np.isnan(after))
    found = []
    for column in np.flatnonzero(~same.all(axis=0)).tolist():
        row = int(np.flatnonzero(~same[:, column])[-1])
        found.append((column, row, float(before[row, column]), float(after[row, column])))
    return found


def _nearest_per_name(leaks: list[Leak]) -> list[Leak]:
    """Keep one leak per kind and name, the changed bar nearest the cut (observation columns merge)."""
    kept: dict[tuple[str, str], Leak] = {}
    for leak in leaks:
        key = (leak.kind, leak.name)
        if key not in kept or leak.bar > kept[key].bar:
            kept[key] = leak
    return list(kept.values())


def _time(timestamp_ns: int) -> str:
    """Return a bar's time in ISO form (the date alone at midnight)."""
    return str(np.datetime64(int(timestamp_ns), "ns").astype("datetime64[s]")).replace("T00:00:00", "")
