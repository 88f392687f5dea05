"""Split bars into train and eval ranges by time, and normalise features with train statistics only."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.data.bars import DataError
from services.data.options import SplitOptions
from services.data.timeparse import parse_instant

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Split:
    """Hold the bar index ranges one episode trains and evaluates on."""

    train: range
    """Bars the model trains on (and normalisation statistics come from)."""
    eval: range
    """Bars the model is evaluated on; all of them come after every train bar."""
    episode: int = 0
    """The episode this split belongs to."""


def split_ranges(
    n_bars: int,
    options: SplitOptions,
    *,
    episode: int = 0,
    timestamps_ns: np.ndarray | None = None,
    warmup: int = 0,
    min_train_bars: int = 2,
    min_eval_bars: int = 2,
) -> Split:
    """Return the train and eval ranges of `episode` over `n_bars` bars.

    The first `warmup` bars (features not valid yet) never train. Without walk-forward every episode gets
    the same split. With it, episode k evaluates on [base + k * eval_bars, + eval_bars) and trains on the
    train_bars before that (less gap_bars), base being the first bar after warm-up, train_bars and gap
    (mode 'fraction') or the first bar at or after eval_start (mode 'date').

    Args:
        min_train_bars: fewest bars the train range needs (one training episode: env.window +
            env.episode_length, `services.env.options.min_bars`).
        min_eval_bars: fewest bars the eval range needs (env.window + 1, `min_eval_bars` there).

    Raises:
        DataError: when the train or the eval range is shorter than its minimum, or when a walk-forward
            episode runs past the data (see `window_count`); the line names the keys to change.
    """
    if episode < 0:
        raise ValueError(f"episode must be >= 0, got {episode}")
    usable_start = max(warmup, 0)
    n_bars = lockbox_start(n_bars, options, warmup=warmup)
    if options.walk_forward:
        base = _walk_forward_base(n_bars, options, timestamps_ns, usable_start)
        eval_start = base + episode * options.eval_bars
        eval_stop = eval_start + options.eval_bars
        train_stop = eval_start - options.gap_bars
        train_start = train_stop - options.train_bars
        if train_start < usable_start:
            raise DataError(
                f"too few rows: walk-forward train window [{train_start}, {train_stop}) starts before bar "
                f"{usable_start} (feature warm-up); move eval_start later or shrink train_bars"
            )
        if eval_stop > n_bars:
            count = window_count(n_bars, options, timestamps_ns=timestamps_ns, warmup=warmup)
            raise DataError(
                f"too few rows: walk-forward episode {episode + 1} needs bars up to {eval_stop} but there "
                f"are {n_bars}: only {count} episodes fit (data.split.train_bars={options.train_bars}, "
                f"data.split.eval_bars={options.eval_bars}); set training.episodes to at most {count} or "
                "lower data.split.eval_bars"
            )
        split = Split(range(train_start, train_stop), range(eval_start, eval_stop), episode)
    elif options.mode == "date":
        eval_start = _date_index(options.eval_start, timestamps_ns)
        split = Split(range(usable_start, eval_start - options.gap_bars), range(eval_start, n_bars), episode)
    else:
        usable = n_bars - usable_start
        train_stop = usable_start + math.floor(usable * options.train_fraction)
        split = Split(range(usable_start, train_stop), range(train_stop + options.gap_bars, n_bars), episode)
    _check_sizes(split, n_bars, usable_start, options, min_train_bars, min_eval_bars)
    return split


def lockbox_start(n_bars: int, options: SplitOptions, *, warmup: int = 0) -> int:
    """Return the first bar of the lockbox (n_bars without one): no episode trains or evaluates from it on.

    The lockbox is the last lockbox_fraction of the usable bars; a session with mode 'fraction' and
    train_fraction 1 - lockbox_fraction (and no lockbox) evaluates on exactly these bars.
    """
    usable_start = max(warmup, 0)
    if options.lockbox_fraction <= 0.0:
        return n_bars
    return usable_start + math.floor((n_bars - usable_start) * (1.0 - options.lockbox_fraction))


def window_count(
    n_bars: int, options: SplitOptions, *, timestamps_ns: np.ndarray | None = None, warmup: int = 0
) -> int:
    """Return how many walk-forward episodes fit in the data (1 without walk-forward)."""
    if not options.walk_forward:
        return 1
    n_bars = lockbox_start(n_bars, options, warmup=warmup)
    base = _walk_forward_base(n_bars, options, timestamps_ns, max(warmup, 0))
    return max(0, (n_bars - base) // options.eval_bars)


def _walk_forward_base(
    n_bars: int, options: SplitOptions, timestamps_ns: np.ndarray | None, usable_start: int
) -> int:
    if options.mode == "date":
        return _date_index(options.eval_start, timestamps_ns)
    return usable_start + options.train_bars + options.gap_bars


def _date_index(eval_start: str, timestamps_ns: np.ndarray | None) -> int:
    if timestamps_ns is None:
        raise ValueError("split mode 'date' needs the bar timestamps (timestamps_ns)")
    stamp = parse_instant(eval_start)
    return int(np.searchsorted(np.asarray(timestamps_ns, dtype=np.int64), stamp, side="left"))


def _check_sizes(
    split: Split, n_bars: int, usable_start: int, options: SplitOptions, min_train: int, min_eval: int
) -> None:
    short = []
    if len(split.train) < min_train:
        short.append(
            f"training needs at least {min_train} (env.window + env.episode_length): lower "
            f"env.episode_length or {_more_train(options)}"
        )
    if len(split.eval) < min_eval:
        short.append(
            f"evaluation needs at least {min_eval} (env.window + 1): lower env.window or "
            f"{_more_eval(options)}"
        )
    if not short:
        return
    raise DataError(
        f"too few rows for the split: {n_bars} bars, {usable_start} of them warm-up, give "
        f"{len(split.train)} train bars {_show(split.train)} and {len(split.eval)} eval bars "
        f"{_show(split.eval)} (data.split.gap_bars={options.gap_bars}); {'; '.join(short)}"
    )


def _more_train(options: SplitOptions) -> str:
    if options.walk_forward:
        return "raise data.split.train_bars"
    if options.mode == "date":
        return "move data.split.eval_start later"
    return "raise data.split.train_fraction"


def _more_eval(options: SplitOptions) -> str:
    if options.walk_forward:
        return "raise data.split.eval_bars"
    if options.mode == "date":
        return "move data.split.eval_start earlier"
    return "lower data.split.train_fraction"


def _show(r: range) -> str:
    return f"[{r.start}, {r.stop})"


@dataclass(frozen=True, slots=True, eq=False)
class Normalizer:
    """Standardise feature columns with a mean and std measured on the train range only."""

    mean: np.ndarray
    """Per-feature mean of the train rows (float64)."""
    std: np.ndarray
    """Per-feature std of the train rows, floored at std_floor (float64)."""
    names: tuple[str, ...] = ()
    """Feature names, for checking that saved statistics match the features they are applied to."""
    clip: float = 0.0
    """Clip standardised values to [-clip, clip]; 0 leaves them unclipped."""

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        rows: range | slice | None = None,
        *,
        names: tuple[str, ...] = (),
        std_floor: float = 1e-8,
        clip: float = 0.0,
    ) -> Normalizer:
        """Measure mean and std over `rows` of `features` (all rows if None), ignoring NaN."""
        data = np.asarray(features)
        if data.ndim != 2:
            raise ValueError(f"features must be 2-D [T, F], got shape {data.shape}")
        if rows is not None:
            part = data[rows.start : rows.stop] if isinstance(rows, range) else data[rows]
        else:
            part = data
        part = part.astype(np.float64, copy=False)
        finite = np.isfinite(part)
        count = finite.sum(axis=0)
        total = np.where(finite, part, 0.0).sum(axis=0)
        mean = np.divide(total, count, out=np.zeros(part.shape[1]), where=count > 0)
        deviation = np.where(finite, part - mean, 0.0)
        var = np.divide(
            (deviation * deviation).sum(axis=0), count, out=np.ones(part.shape[1]), where=count > 0
        )
        std = np.maximum(np.sqrt(var), std_floor)
        empty = np.flatnonzero(count == 0)
        if empty.size:
            shown = [names[i] if i < len(names) else str(i) for i in empty]
            logger.warning("normalizer: no finite train values for %s; using mean 0, std 1", shown)
        if names and len(names) != part.shape[1]:
            raise ValueError(f"{len(names)} names for {part.shape[1]} feature columns")
        return cls(mean=mean, std=std, names=tuple(names), clip=float(clip))

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Return (features - mean) / std as float32, clipped if `clip` > 0; NaN stays NaN."""
        data = np.asarray(features)
        if data.shape[-1] != len(self.mean):
            raise ValueError(f"features have {data.shape[-1]} columns, the normalizer {len(self.mean)}")
        out = ((data - self.mean) / self.std).astype(np.float32)
        if self.clip > 0:
            np.clip(out, -self.clip, self.clip, out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict that `from_dict` reads back."""
        return {
            "names": list(self.names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "clip": float(self.clip),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild a normalizer saved with `to_dict`."""
        unknown = set(data) - {"names", "mean", "std", "clip"}
        if unknown:
            raise ValueError(f"normalizer dict has unknown keys {sorted(unknown)}")
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            std = np.asarray(data["std"], dtype=np.float64)
        except KeyError as exc:
            raise ValueError(f"normalizer dict lacks {exc.args[0]!r}") from None
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"normalizer mean {mean.shape} and std {std.shape} must be equal 1-D shapes")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("normalizer mean must be finite and std finite and > 0")
        names = tuple(str(n) for n in data.get("names", ()))
        if names and len(names) != len(mean):
            raise ValueError(f"normalizer has {len(names)} names for {len(mean)} features")
        return cls(mean=mean, std=std, names=names, clip=float(data.get("clip", 0.0)))
