"""Compute causal float32 features from bars, streaming chunk by chunk.

Every feature at bar t uses bars <= t only. A feature is one function of a `FeatureContext`, registered
with `@register_feature(name, warmup=...)`; the pipeline carries the last bars of each chunk (and the
state of exponential averages) into the next, so chunked and one-shot results agree.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.data.bars import Bars, DataError
from services.data.options import DEFAULT_FEATURES, FeatureOptions

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

FEATURE_VERSION = 1
"""Bump when a feature's arithmetic changes, so cached features are rebuilt."""

_ALL_FIELDS = ("open", "high", "low", "close", "volume")
_BLOCK_ROWS = 1 << 16  # Rows per internal block: bounds temporaries and the magnitude of running sums.
_TINY = 1e-12

FeatureFunction = Callable[["FeatureContext"], np.ndarray]


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Describe one registered feature."""

    name: str
    """The name options and configs use."""
    function: FeatureFunction
    """Maps a context of len(ctx) bars to a float64 array of len(ctx) values."""
    warmup: int
    """Leading bars of a series for which the feature is not valid yet."""
    lookback: int
    """Earlier bars a value needs (kept in the carried tail); exponential state is carried separately."""
    description: str
    """One line for docs and logs."""
    uses: tuple[str, ...] = _ALL_FIELDS
    """The bar fields the feature reads; a close-only source can compute those that read only closes."""


_REGISTRY: dict[str, FeatureSpec] = {}


def register_feature(
    name: str,
    *,
    warmup: int,
    lookback: int | None = None,
    description: str = "",
    uses: tuple[str, ...] = _ALL_FIELDS,
) -> Callable[[FeatureFunction], FeatureFunction]:
    """Register a feature function under `name`.

    Args:
        warmup: leading bars of a series whose value is not valid yet (they come out NaN).
        lookback: earlier bars one value needs; defaults to `warmup`. Features built on `ctx.ema` carry
            their state instead and need only the bars their inputs look back on.
        description: one line for docs; defaults to the first line of the function's docstring.
        uses: the bar fields the function reads (all of them unless said): a close-only source refuses
            a feature that reads open, high or low.
    """
    if name in _REGISTRY:
        raise ValueError(f"feature {name!r} is already registered")
    if warmup < 0 or (lookback is not None and lookback < 0):
        raise ValueError(f"feature {name!r}: warmup and lookback must be >= 0")

    def decorate(function: FeatureFunction) -> FeatureFunction:
        if name in _REGISTRY:
            raise ValueError(f"feature {name!r} is already registered")
        _REGISTRY[name] = FeatureSpec(
            name=name,
            function=function,
            warmup=warmup,
            lookback=warmup if lookback is None else lookback,
            description=description or (function.__doc__ or name).strip().splitlines()[0],
            uses=uses,
        )
        return function

    return decorate


def available_features() -> tuple[str, ...]:
    """Return the names of every registered feature, sorted."""
    return tuple(sorted(_REGISTRY))


def feature_spec(name: str) -> FeatureSpec:
    """Return the registered spec of one feature."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; known: {', '.join(available_features())}") from None


def custom_feature(path: str) -> FeatureSpec:
    """Import a "module:function" of `FeatureOptions.custom` and return the spec it registered.

    Raises:
        DataError: naming the key when the module cannot be imported, has no such function, or the
            function was not registered with `@register_feature` (which declares its warm-up).
    """
    module_name, _, function_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may fail in any way while it is imported
        reason = f"{path!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        raise DataError(reason, path="data.features.custom") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise DataError(f"{path!r}: {module_name} has no {function_name}", path="data.features.custom")
    spec = next((spec for spec in _REGISTRY.values() if spec.function is function), None)
    if spec is None:
        raise DataError(
            f"{path!r}: {function_name} is not registered: decorate it with "
            "@register_feature(name, warmup=...) from services.data.features",
            path="data.features.custom",
        )
    return spec


def feature_specs(options: FeatureOptions) -> tuple[FeatureSpec, ...]:
    """Return the specs of the configured features in column order: the named ones, then the custom ones."""
    specs = tuple(feature_spec(name) for name in options.names) + tuple(
        custom_feature(path) for path in options.custom
    )
    names = [spec.name for spec in specs]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise DataError(f"{repeated!r} is also in data.features.names", path="data.features.custom")
    return specs


class FeatureContext:
    """Give feature functions the carried tail plus the new bars, and shared intermediate results.

    Arrays cover `len(self)` bars: the `n_tail` bars carried from earlier chunks, then the new ones.
    Values a function returns for the tail rows are discarded.
    """

    def __init__(self, bars: Bars, n_tail: int, ema_state: dict[str, float]) -> None:
        self.open = bars.open
        self.high = bars.high
        self.low = bars.low
        self.close = bars.close
        self.volume = bars.volume
        self.n_tail = n_tail
        self._ema_state = ema_state
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.close)

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return `compute()`, computed once per chunk for this key."""
        value = self._cache.get(key)
        if value is None:
            value = compute()
            self._cache[key] = value
        return value

    def log_close(self) -> np.ndarray:
        """Return log(close)."""
        return self.cached("log_close", lambda: np.log(self.close))

    def log_return(self, k: int) -> np.ndarray:
        """Return log(close[t] / close[t-k]); NaN where t-k is not available."""

        def compute() -> np.ndarray:
            lc = self.log_close()
            out = np.full(len(lc), np.nan)
            if k < len(lc):
                out[k:] = lc[k:] - lc[:-k]
            return out

        return self.cached(f"log_return:{k}", compute)

    def rolling_mean_std(self, key: str, x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean and sample std of x over the last `window` bars; NaN until a full window."""

        def compute() -> np.ndarray:
            return np.stack(_rolling_mean_std(x, window))

        both = self.cached(f"rolling:{key}:{window}", compute)
        return both[0], both[1]

    def ema(self, key: str, x: np.ndarray, alpha: float) -> np.ndarray:
        """Return the exponential average y[t] = alpha * x[t] + (1 - alpha) * y[t-1] of x.

        It starts at the first finite x of the series and carries its last value into the next chunk
        under `key`, so chunked results equal one-shot results exactly. Tail rows are NaN.
        """

        def compute() -> np.ndarray:
            new = x[self.n_tail :]
            state = self._ema_state.get(key)
            out = np.full(len(x), np.nan)
            if state is None:
                finite = np.flatnonzero(np.isfinite(new))
                if finite.size == 0:
                    return out
                start = int(finite[0])
                out[self.n_tail + start :] = _ewm(new[start:], alpha)
            else:
                out[self.n_tail :] = _ewm(np.concatenate(([state], new)), alpha)[1:]
            if len(new) and np.isfinite(out[-1]):
                self._ema_state[key] = float(out[-1])
            return out

        return self.cached(f"ema:{key}", compute)


def _ewm(x: np.ndarray, alpha: float) -> np.ndarray:
    # pandas' recursive (adjust=False) average depends only on the previous value, so seeding it with a
    # carried value reproduces the uninterrupted series bit for bit.
    import pandas as pd

    return pd.Series(x, copy=False).ewm(alpha=alpha, adjust=False).mean().to_numpy()


def _rolling_mean_std(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    mean = np.full(n, np.nan)
    std = np.full(n, np.nan)
    if n < window:
        return mean, std
    valid = np.isfinite(x)
    finite = np.flatnonzero(valid)
    # Running sums around a local anchor keep cancellation small in the variance.
    anchor = float(x[finite[0]]) if finite.size else 0.0
    centred = np.where(valid, x - anchor, 0.0)
    s1 = np.concatenate(([0.0], np.cumsum(centred)))
    s2 = np.concatenate(([0.0], np.cumsum(centred * centred)))
    count = np.concatenate(([0], np.cumsum(valid)))
    w1 = s1[window:] - s1[:-window]
    w2 = s2[window:] - s2[:-window]
    full = (count[window:] - count[:-window]) == window
    m = w1 / window
    var = np.maximum(w2 - w1 * m, 0.0) / max(window - 1, 1)
    # Running sums leave rounding residue on a window of equal values; count changes (exact integers)
    # so such a window gets std 0 and its mean exactly.
    changes = np.concatenate(([0], np.cumsum(x[1:] != x[:-1])))
    flat = (changes[window - 1 :] - changes[: n - window + 1]) == 0
    mean[window - 1 :] = np.where(full, np.where(flat, x[window - 1 :], m + anchor), np.nan)
    std[window - 1 :] = np.where(full, np.where(flat, 0.0, np.sqrt(var)), np.nan)
    return mean, std


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(np.abs(den) > _TINY, out, np.where(np.isnan(den), np.nan, 0.0))


def _register_log_return(k: int) -> None:
    @register_feature(
        f"ret_{k}",
        warmup=k,
        uses=("close",),
        description=f"Log return over {k} bar{'s' if k > 1 else ''}: log(close[t] / close[t-{k}]).",
    )
    def log_return(ctx: FeatureContext) -> np.ndarray:
        return ctx.log_return(k)


def _register_volatility(window: int) -> None:
    description = f"Sample std of the last {window} one-bar log returns (not annualised)."

    @register_feature(f"vol_{window}", warmup=window, description=description, uses=("close",))
    def volatility(ctx: FeatureContext) -> np.ndarray:
        return ctx.rolling_mean_std("ret_1", ctx.log_return(1), window)[1]


for _k in (1, 5, 20, 60):
    _register_log_return(_k)
for _w in (20, 60):
    _register_volatility(_w)


@register_feature("hl_range", warmup=0, uses=("high", "low", "close"))
def high_low_range(ctx: FeatureContext) -> np.ndarray:
    """Bar range relative to close: (high - low) / close."""
    return (ctx.high - ctx.low) / ctx.close


@register_feature("gap", warmup=1, uses=("open", "close"))
def overnight_gap(ctx: FeatureContext) -> np.ndarray:
    """Opening gap: log(open[t] / close[t-1])."""
    out = np.full(len(ctx), np.nan)
    out[1:] = np.log(ctx.open[1:]) - ctx.log_close()[:-1]
    return out


@register_feature("body", warmup=0, uses=("open", "high", "low", "close"))
def candle_body(ctx: FeatureContext) -> np.ndarray:
    """Candle body within its range, in [-1, 1]: (close - open) / (high - low), 0 for a flat bar."""
    return _safe_ratio(ctx.close - ctx.open, ctx.high - ctx.low)


@register_feature("vol_z_20", warmup=19, uses=("volume",))
def volume_zscore(ctx: FeatureContext) -> np.ndarray:
    """Z-score of log(1 + volume) against its last 20 bars (current included); 0 when volume is flat."""
    log_volume = ctx.cached("log1p_volume", lambda: np.log1p(ctx.volume))
    mean, std = ctx.rolling_mean_std("log1p_volume", log_volume, 20)
    return _safe_ratio(log_volume - mean, std)


@register_feature("sma_ratio_20", warmup=19, uses=("close",))
def sma_ratio(ctx: FeatureContext) -> np.ndarray:
    """Close relative to its 20-bar simple average: close / sma20 - 1."""
    mean, _ = ctx.rolling_mean_std("close", ctx.close, 20)
    return ctx.close / mean - 1.0


def _register_ema_ratio(span: int) -> None:
    description = f"Close relative to its exponential average of span {span}: close / ema{span} - 1."

    # The average's seed (the first close) still weighs (1 - alpha)^span = about e^-2 after the warm-up.
    @register_feature(f"ema_ratio_{span}", warmup=span, lookback=0, description=description, uses=("close",))
    def ema_ratio(ctx: FeatureContext) -> np.ndarray:
        return ctx.close / ctx.ema(f"close_ema{span}", ctx.close, 2 / (span + 1)) - 1.0


for _span in (50, 100, 200):
    _register_ema_ratio(_span)


@register_feature("rsi_14", warmup=14, lookback=1, uses=("close",))
def rsi(ctx: FeatureContext) -> np.ndarray:
    """Wilder's RSI(14) rescaled to [-1, 1]: (RSI - 50) / 50, averages seeded with the first change."""
    change = np.full(len(ctx), np.nan)
    change[1:] = np.diff(ctx.close)
    gain = ctx.ema(
        "rsi14_gain", np.where(change > 0, change, np.where(np.isnan(change), np.nan, 0.0)), 1 / 14
    )
    loss = ctx.ema(
        "rsi14_loss", np.where(change < 0, -change, np.where(np.isnan(change), np.nan, 0.0)), 1 / 14
    )
    return _safe_ratio(gain - loss, gain + loss)


@register_feature("macd_hist", warmup=33, lookback=0, uses=("close",))
def macd_histogram(ctx: FeatureContext) -> np.ndarray:
    """MACD(12, 26, 9) histogram divided by close: (macd - signal) / close."""
    fast = ctx.ema("close_ema12", ctx.close, 2 / 13)
    slow = ctx.ema("close_ema26", ctx.close, 2 / 27)
    macd = fast - slow
    signal = ctx.ema("macd_signal9", macd, 2 / 10)
    return (macd - signal) / ctx.close


@register_feature("atr_14", warmup=14, lookback=1, uses=("high", "low", "close"))
def average_true_range(ctx: FeatureContext) -> np.ndarray:
    """Wilder's ATR(14) divided by close, the true range of the first bar being high - low."""
    previous = np.concatenate(([np.nan], ctx.close[:-1]))
    true_range = np.fmax(ctx.high - ctx.low, np.fmax(np.abs(ctx.high - previous), np.abs(ctx.low - previous)))
    return ctx.ema("atr14", true_range, 1 / 14) / ctx.close


class FeaturePipeline:
    """Turn a stream of bar chunks into float32 feature rows, carrying rolling state between chunks."""

    def __init__(self, options: FeatureOptions) -> None:
        self._options = options
        self._specs = feature_specs(options)
        self.warmup: int = max(spec.warmup for spec in self._specs)
        """Leading bars of the stream whose features are NaN."""
        self.lookback: int = max(spec.lookback for spec in self._specs)
        """Bars carried from one chunk to the next."""
        self._tail = Bars.empty()
        self._ema_state: dict[str, float] = {}
        self._seen = 0

    @property
    def names(self) -> tuple[str, ...]:
        """Return the feature names, in column order."""
        return tuple(spec.name for spec in self._specs)

    @property
    def rows_seen(self) -> int:
        """Return how many bars the pipeline has processed since creation or `reset`."""
        return self._seen

    def reset(self) -> None:
        """Forget all carried state, so the next chunk starts a new series."""
        self._tail = Bars.empty()
        self._ema_state = {}
        self._seen = 0

    def update(self, bars: Bars) -> np.ndarray:
        """Return float32 features [len(bars), F] for the next chunk; warm-up rows are NaN."""
        out = np.empty((len(bars), len(self._specs)), dtype=np.float32)
        for start in range(0, len(bars), _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, len(bars))
            self._update_block(bars.slice(start, stop), out[start:stop])
        return out

    def _update_block(self, bars: Bars, out: np.ndarray) -> None:
        n_tail = len(self._tail)
        extended = Bars.concat([self._tail, bars]) if n_tail else bars
        ctx = FeatureContext(extended, n_tail, self._ema_state)
        for column, spec in enumerate(self._specs):
            values = spec.function(ctx)
            if values.shape != (len(extended),):
                raise ValueError(
                    f"feature {spec.name!r} returned shape {values.shape}, expected ({len(extended)},)"
                )
            out[:, column] = values[n_tail:]
        if self._seen < self.warmup:
            out[: self.warmup - self._seen] = np.nan
        self._seen += len(bars)
        if self.lookback:
            keep = min(self.lookback, len(extended))
            tail = extended.slice(len(extended) - keep, len(extended))
            self._tail = Bars(
                tail.timestamp.copy(),
                tail.open.copy(),
                tail.high.copy(),
                tail.low.copy(),
                tail.close.copy(),
                tail.volume.copy(),
            )


def compute_features(frame: pd.DataFrame, options: FeatureOptions | None = None) -> np.ndarray:
    """Return float32 features [T, F] of a DataFrame with open, high, low, close (and volume) columns.

    Rows inside the warm-up are NaN. Volume is taken as zero when the frame has none.
    """
    pipeline = FeaturePipeline(options or FeatureOptions())
    return pipeline.update(Bars.from_frame(frame))


def source_features(options: FeatureOptions, *, close_only: bool, has_volume: bool) -> FeatureOptions:
    """Return the features to compute on a source: on a close-only one, only those it can honestly give.

    The default set on a close-only source keeps the features that read only closes (and volume, when
    the source has it); any other set naming a feature that reads open, high or low is refused.
    """
    if not close_only:
        return options
    present = {"close", "volume"} if has_volume else {"close"}
    if options.names == DEFAULT_FEATURES:
        kept = tuple(n for n in options.names if set(feature_spec(n).uses) <= present)
        options = dataclasses.replace(options, names=kept)
    for spec in feature_specs(options):
        if set(spec.uses) & {"open", "high", "low"}:
            usable = ", ".join(n for n in available_features() if feature_spec(n).uses == ("close",))
            key = "data.features.names" if spec.name in options.names else "data.features.custom"
            raise DataError(
                f"{key}: {spec.name!r} reads open, high or low, which this close-only source "
                f"lacks; choose among {usable}"
            )
    return options


def feature_warmup(options: FeatureOptions | None = None) -> int:
    """Return how many leading bars the chosen features leave NaN."""
    return max(spec.warmup for spec in feature_specs(options or FeatureOptions()))
