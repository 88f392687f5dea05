"""Generate realistic, seeded OHLCV bars for tests and scale benchmarks.

The close follows a log-price process: a drifting trend plus a slowly mean-reverting deviation (so prices
stay positive and within a plausible band over millions of bars), driven by noise whose volatility
switches between a calm and a turbulent regime (a two-state Markov chain). Open gaps from the previous
close; high and low extend beyond open and close; volume grows with volatility. Every random quantity
comes from its own stream, one draw per bar, so the bars depend on the seed only, never on chunking.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from services.validation import require

logger = logging.getLogger(__name__)

_NS_PER_DAY = 86_400 * 10**9
_STREAMS = ("regime", "move", "gap", "high", "low", "volume")


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticOptions:
    """Shape the synthetic price process; drift, volatility and reversion are annual, scaled to the bars."""

    start_price: float = 100.0
    """Close before the first bar."""
    drift: float = 0.07
    """Trend of the log price per year."""
    vol_low: float = 0.15
    """Annualised volatility of the calm regime."""
    vol_high: float = 0.45
    """Annualised volatility of the turbulent regime."""
    p_to_high: float = 0.01
    """Chance per bar of switching from calm to turbulent."""
    p_to_low: float = 0.05
    """Chance per bar of switching from turbulent to calm."""
    mean_reversion: float = 0.2
    """Share of the log price's deviation from the trend removed per year (keeps prices in a band)."""
    gap_scale: float = 0.3
    """Std of the opening gap as a multiple of the bar's volatility."""
    wick_scale: float = 0.5
    """Scale of the high and low wicks beyond open and close, as a multiple of the bar's volatility."""
    base_volume: float = 1_000_000.0
    """Typical volume of a calm bar."""

    def __post_init__(self) -> None:
        positive = ("start_price", "vol_low", "vol_high", "base_volume", "mean_reversion")
        require(self, positive, lambda v: v > 0, "> 0")
        require(self, ("p_to_high", "p_to_low"), lambda v: 0 < v < 1, "in (0, 1)")
        require(self, ("gap_scale", "wick_scale"), lambda v: v >= 0, ">= 0")


def bars_per_year_of(freq: str, start: str = "2000-01-03") -> float:
    """Return how many bars of a pandas frequency fall in a year (252-ish for 'B', 525,960 for '1min')."""
    index = pd.date_range(pd.Timestamp(start), periods=1000, freq=freq, unit="ns")
    years = (index[-1] - index[0]).value / (365.25 * _NS_PER_DAY)
    return (len(index) - 1) / years


class SyntheticStream:
    """Produce consecutive chunks of one synthetic series; chunk sizes do not change the bars."""

    def __init__(
        self,
        *,
        seed: int,
        start: str = "2000-01-03",
        freq: str = "B",
        options: SyntheticOptions | None = None,
    ) -> None:
        self.options = options or SyntheticOptions()
        sequences = np.random.SeedSequence(seed).spawn(len(_STREAMS))
        self._rng = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, sequences, strict=True)}
        self._offset = pd.tseries.frequencies.to_offset(freq)
        self._next_time: pd.Timestamp | None = None
        self._start = pd.Timestamp(start)
        self._bar = 0
        self._turbulent = False
        self._deviation = 0.0
        self._close = float(self.options.start_price)
        per_year = bars_per_year_of(freq, start)
        self._vol_low = self.options.vol_low / np.sqrt(per_year)
        self._vol_high = self.options.vol_high / np.sqrt(per_year)
        self._drift = self.options.drift / per_year
        self._reversion = min(self.options.mean_reversion / per_year, 0.5)

    def next(self, n: int) -> pd.DataFrame:
        """Return the next n bars: timestamp, open, high, low, close, volume."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        o = self.options
        timestamps = self._timestamps(n)
        turbulent = self._regimes(self._rng["regime"].random(n))
        sigma = np.where(turbulent, self._vol_high, self._vol_low)
        shocks = sigma * self._rng["move"].standard_normal(n)
        # deviation[t] = (1 - k) * deviation[t-1] + shock[t], written as an exponential average.
        k = self._reversion
        seeded = np.concatenate(([self._deviation], shocks / k))
        deviation = pd.Series(seeded).ewm(alpha=k, adjust=False).mean().to_numpy()[1:]
        trend = np.log(o.start_price) + self._drift * (self._bar + 1 + np.arange(n))
        close = np.exp(trend + deviation)
        previous = np.concatenate(([self._close], close[:-1]))
        open_ = previous * np.exp(o.gap_scale * sigma * self._rng["gap"].standard_normal(n))
        high = np.maximum(open_, close) * np.exp(
            o.wick_scale * sigma * np.abs(self._rng["high"].standard_normal(n))
        )
        low = np.minimum(open_, close) * np.exp(
            -o.wick_scale * sigma * np.abs(self._rng["low"].standard_normal(n))
        )
        move = np.abs(np.log(close / previous)) / sigma
        activity = np.log(sigma / self._vol_low) + 0.3 * move + 0.25 * self._rng["volume"].standard_normal(n)
        volume = np.round(o.base_volume * np.exp(activity))
        if n:
            self._bar += n
            self._deviation = float(deviation[-1])
            self._close = float(close[-1])
        return pd.DataFrame(
            {
                "timestamp": timestamps,
                "open": open_,
                "high": high,
                "low": low,
                "close": close,
                "volume": volume,
            }
        )

    def _timestamps(self, n: int) -> pd.DatetimeIndex:
        first = self._start if self._next_time is None else self._next_time
        try:
            index = pd.date_range(first, periods=n, freq=self._offset, unit="ns")
            if n:
                self._next_time = index[-1] + self._offset
        except (OverflowError, ValueError) as exc:
            raise ValueError(
                f"{n} more bars at {self._offset.freqstr} from {first} run past year 2262"
            ) from exc
        return index

    def _regimes(self, uniform: np.ndarray) -> np.ndarray:
        """Run the two-state chain over one uniform draw per bar, jumping from switch to switch."""
        n = len(uniform)
        out = np.empty(n, dtype=bool)
        index = np.arange(n)
        # next_up[i]: first bar >= i where a calm bar would turn turbulent (n if none); likewise next_down.
        next_up = np.minimum.accumulate(np.where(uniform < self.options.p_to_high, index, n)[::-1])[::-1]
        next_down = np.minimum.accumulate(np.where(uniform < self.options.p_to_low, index, n)[::-1])[::-1]
        state = self._turbulent
        position = 0
        while position < n:
            switch = int((next_down if state else next_up)[position])
            out[position:switch] = state
            if switch >= n:
                break
            state = not state
            out[switch] = state
            position = switch + 1
        self._turbulent = state
        return out


def generate_bars(
    n: int,
    *,
    seed: int,
    start: str = "2000-01-03",
    freq: str = "B",
    options: SyntheticOptions | None = None,
) -> pd.DataFrame:
    """Return n seeded OHLCV bars with columns timestamp, open, high, low, close, volume.

    `freq` is a pandas frequency ('B' business days by default, '1min', '1h', '1D', ...).
    """
    return SyntheticStream(seed=seed, start=start, freq=freq, options=options).next(n)


def write_csv(
    path: str | Path,
    n: int,
    seed: int,
    chunk_rows: int = 100_000,
    *,
    start: str = "2000-01-03",
    freq: str = "B",
    options: SyntheticOptions | None = None,
) -> Path:
    """Write n seeded bars to a CSV file (gzip when it ends in .gz) chunk by chunk, in bounded memory.

    The file holds exactly the bars `generate_bars(n, seed=seed, ...)` returns, with prices at 4 decimals.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = SyntheticStream(seed=seed, start=start, freq=freq, options=options)
    opener = gzip.open if target.name.endswith(".gz") else open
    with opener(target, "wt", newline="") as handle:
        handle.write("timestamp,open,high,low,close,volume\n")
        daily: bool | None = None
        written = 0
        while written < n:
            frame = stream.next(min(chunk_rows, n - written))
            if daily is None:
                daily = bool((frame["timestamp"].to_numpy().astype(np.int64) % _NS_PER_DAY == 0).all())
            _write_chunk(handle, frame, daily)
            written += len(frame)
    return target


def _write_chunk(handle: IO[str], frame: pd.DataFrame, daily: bool) -> None:
    stamps = frame["timestamp"].to_numpy()
    text = np.datetime_as_string(stamps, unit="D" if daily else "s")
    out = frame.drop(columns="timestamp")
    out.insert(0, "timestamp", text)
    out["volume"] = out["volume"].astype(np.int64)
    out.to_csv(handle, header=False, index=False, float_format="%.4f", lineterminator="\n")


def _count(text: str) -> int:
    """Read a row count: an integer >= 0."""
    try:
        rows = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if rows < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {rows}")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the generator (`run.py generate-data`) to a parser."""
    parser.add_argument("--rows", type=_count, required=True, help="number of bars")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output CSV path (.gz for gzip)")
    parser.add_argument("--start", default="2000-01-03", help="first bar time (default 2000-01-03)")
    parser.add_argument("--freq", default="B", help="pandas bar frequency: B, 1D, 1h, 1min ... (default B)")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="rows generated per chunk")


def generate(args: argparse.Namespace) -> int:
    """Write the synthetic CSV the parsed options describe and say where; exit status 2 on a bad value."""
    started = time.perf_counter()
    try:
        path = write_csv(args.out, args.rows, args.seed, args.chunk_rows, start=args.start, freq=args.freq)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    size = path.stat().st_size
    print(f"wrote {args.rows:,} bars ({size / 2**20:.1f} MiB) to {path} in {elapsed:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Write a synthetic CSV from the command line: --rows N --seed S --out FILE."""
    parser = argparse.ArgumentParser(prog="python -m services.data.synthetic", description=main.__doc__)
    add_arguments(parser)
    return generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
