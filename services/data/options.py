"""Configure the data side: where the bars are, which features to compute, where training stops.

Nothing heavy is imported here, so the config can be loaded without numpy or pandas; the two checks that
need them (feature names against the registry, an ISO eval date) import their module when they run.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.validation import require

EPOCH_UNITS: dict[str, int] = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}
"""Numeric timestamp formats and their nanoseconds per unit."""

DEFAULT_FEATURES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_20",
    "vol_20",
    "hl_range",
    "vol_z_20",
    "rsi_14",
    "macd_hist",
)
"""Log returns over 1, 5 and 20 bars, 20-bar volatility, high-low range / close, volume z-score (20),
RSI(14) in [-1, 1] and the MACD(12, 26, 9) histogram / close. Warm-up: 33 bars (set by macd_hist)."""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and value >= 1


def _is_custom_path(value: object) -> bool:
    if not isinstance(value, str):
        return False
    module, sep, function = value.partition(":")
    return bool(sep) and all(part.isidentifier() for part in module.split(".")) and function.isidentifier()


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceOptions:
    """Say where the bars are and how to read and clean them."""

    path: str = "data/STOCKS_GOOGL.csv"
    """A CSV file (optionally gzip), a Parquet file, a folder of them or a glob; read in time order."""
    price: str = "close"
    """'close', or 'adj_close' to use Adj Close as close and scale open, high and low by adj_close/close."""
    timestamp_column: str = ""
    """Name of the time column (any case); empty finds Timestamp, Datetime, Date, Time or the index."""
    timestamp_format: str = ""
    """A strftime format such as '%d.%m.%Y %H:%M:%S.%f', or epoch_s/ms/us/ns; empty detects it."""
    chunk_rows: int = 100_000
    """Rows per chunk read from a file; bounds the reader's memory."""
    nan_policy: str = "drop"
    """'drop' rows with a missing value, 'ffill' prices from the previous bar, or 'error'."""
    ffill_limit: int = 3
    """Most consecutive bars 'ffill' may fill; a longer gap is an error. Nothing is ever back-filled."""
    ohlc_policy: str = "error"
    """'error' when open or close lies outside [low, high], or 'clip' to widen high and low to them."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"SourceOptions.path must be a non-empty string, got {self.path!r}")
        if self.price not in ("close", "adj_close"):
            raise ValueError(f"SourceOptions.price must be 'close' or 'adj_close', got {self.price!r}")
        if self.timestamp_format and not (
            "%" in self.timestamp_format or self.timestamp_format in EPOCH_UNITS
        ):
            raise ValueError(
                "SourceOptions.timestamp_format must be a strftime format or one of "
                f"{sorted(EPOCH_UNITS)}, got {self.timestamp_format!r}"
            )
        require(self, ("chunk_rows",), _is_count, "an integer >= 1")
        if self.nan_policy not in ("drop", "ffill", "error"):
            raise ValueError(
                f"SourceOptions.nan_policy must be 'drop', 'ffill' or 'error', got {self.nan_policy!r}"
            )
        require(self, ("ffill_limit",), _is_count, "an integer >= 1")
        if self.ohlc_policy not in ("error", "clip"):
            raise ValueError(f"SourceOptions.ohlc_policy must be 'error' or 'clip', got {self.ohlc_policy!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureOptions:
    """Choose the features to compute."""

    names: tuple[str, ...] = DEFAULT_FEATURES
    """Registered feature names, in column order (see docs/DATA.md for the list)."""
    custom: tuple[str, ...] = ()
    """Your own features as "module:function" (registered with @register_feature), after names."""

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not isinstance(self.names, tuple | list):
            raise ValueError(f"FeatureOptions.names must be a tuple of feature names, got {self.names!r}")
        if isinstance(self.names, list):
            object.__setattr__(self, "names", tuple(self.names))
        if not self.names:
            raise ValueError("FeatureOptions.names must name at least one feature, got ()")
        # The registry is filled by the feature module itself (numpy), so it is read only when checking.
        from services.data.features import available_features

        known = available_features()
        for name in self.names:
            if name not in known:
                raise ValueError(
                    f"FeatureOptions.names has unknown feature {name!r}; known: {', '.join(known)}"
                )
        duplicated = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicated:
            raise ValueError(f"FeatureOptions.names repeats {duplicated[0]!r}")
        # Custom modules are imported only when a pipeline is built (services.data.features), so loading a
        # config runs no user code.
        if isinstance(self.custom, str) or not isinstance(self.custom, tuple | list):
            raise ValueError(f"FeatureOptions.custom must list 'module:function' paths, got {self.custom!r}")
        object.__setattr__(self, "custom", tuple(self.custom))
        bad = [path for path in self.custom if not _is_custom_path(path)]
        if bad:
            raise ValueError(f"FeatureOptions.custom has {bad[0]!r}; expected 'module:function'")
        if len(set(self.custom)) < len(self.custom):
            raise ValueError(f"FeatureOptions.custom repeats an entry, got {list(self.custom)!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitOptions:
    """Say where training stops and evaluation starts."""

    mode: str = "fraction"
    """'fraction': train on the first train_fraction of the bars; 'date': evaluate from eval_start on."""
    train_fraction: float = 0.8
    """Share of the usable bars (after the feature warm-up) that trains, for mode 'fraction'."""
    eval_start: str = ""
    """ISO date or time of the first eval bar, for mode 'date' (e.g. '2017-01-01')."""
    gap_bars: int = 0
    """Bars left out between the train and the eval range, so no rolling window spans both."""
    walk_forward: bool = False
    """Move the windows forward each episode: episode k trains on window k and evaluates on the next."""
    train_bars: int = 0
    """Bars in each walk-forward train window."""
    eval_bars: int = 0
    """Bars in each walk-forward eval window; the windows move forward by this much per episode."""
    lockbox_fraction: float = 0.0
    """Share of the usable bars at the end that no episode trains or evaluates on (a study's lockbox)."""

    def __post_init__(self) -> None:
        if self.mode not in ("fraction", "date"):
            raise ValueError(f"SplitOptions.mode must be 'fraction' or 'date', got {self.mode!r}")
        if not isinstance(self.train_fraction, int | float) or not 0.0 < float(self.train_fraction) < 1.0:
            raise ValueError(f"SplitOptions.train_fraction must be in (0, 1), got {self.train_fraction!r}")
        if self.mode == "date":
            if not self.eval_start:
                raise ValueError("SplitOptions.eval_start must be set for mode 'date', got ''")
            # Dates are read the way the split reads them (pandas), so only then is it imported.
            from services.data.timeparse import parse_instant

            parse_instant(self.eval_start)
        require(
            self,
            ("gap_bars", "train_bars", "eval_bars"),
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "an integer >= 0",
        )
        lockbox = self.lockbox_fraction
        if not isinstance(lockbox, int | float) or not 0.0 <= float(lockbox) < 1.0:
            raise ValueError(
                f"SplitOptions.lockbox_fraction must be in [0, 1), got {self.lockbox_fraction!r}"
            )
        if self.walk_forward and (self.train_bars < 1 or self.eval_bars < 1):
            raise ValueError(
                "SplitOptions.train_bars and eval_bars must be >= 1 with walk_forward, "
                f"got train_bars={self.train_bars!r}, eval_bars={self.eval_bars!r}"
            )


UNIVERSE_FORMS = ("auto", "wide", "long", "files")
"""Source forms: auto detects wide, long or files from the path and the header."""
SYMBOL_COLUMNS = ("symbol", "ticker", "tic", "asset")
"""Column keys (see column_key) a long file's symbol column is found under, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UniverseOptions:
    """Say how a multi-symbol source is laid out and which cross-sectional features to add."""

    form: str = "auto"
    """'wide', 'long', 'files' or 'auto' (a folder or glob is files; a file with a symbol column long)."""
    symbol_column: str = ""
    """Name of a long file's symbol column (any case); empty finds Symbol, Ticker, Tic or Asset."""
    cross_sectional: tuple[str, ...] = ()
    """Per-symbol features to rank across the tradable symbols at each bar, into [-1, 1]."""

    def __post_init__(self) -> None:
        if self.form not in UNIVERSE_FORMS:
            raise ValueError(f"UniverseOptions.form must be one of {UNIVERSE_FORMS}, got {self.form!r}")
        if isinstance(self.cross_sectional, str) or not isinstance(self.cross_sectional, tuple | list):
            raise ValueError(
                "UniverseOptions.cross_sectional must be a tuple of feature names, got "
                f"{self.cross_sectional!r}"
            )
        object.__setattr__(self, "cross_sectional", tuple(self.cross_sectional))
