"""Validate and clean one chunk of parsed rows: numbers, missing values, prices, OHLC and time order.

What the checks need from earlier chunks and files (the last bar's time, the last values and the length
of the current gap for forward filling) is carried in a `StreamState`.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.data.bars import PRICE_COLUMNS, Bars, ErrorAt
from services.data.options import SourceOptions
from services.data.timeparse import show_time

if TYPE_CHECKING:
    import pandas as pd


@dataclass(slots=True)
class CleanReport:
    """Count, over a whole source, the rows cleaning left out or changed."""

    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped by nan_policy=drop, by reason (e.g. "missing close")."""
    filled: int = 0
    """Rows with a missing value that nan_policy=ffill filled."""
    clipped: int = 0
    """Bars whose high and low ohlc_policy=clip widened to their open and close."""

    @property
    def dropped_rows(self) -> int:
        """Return the number of dropped rows."""
        return sum(self.dropped.values())


@dataclass(slots=True)
class StreamState:
    """Carry what validation needs across chunk and file boundaries."""

    last_timestamp: int | None = None
    last_where: str = ""
    last_values: dict[str, float] = field(default_factory=dict)
    missing_run: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cleaner:
    """Turn one file's parsed chunks into validated bars, following the source's cleaning options."""

    options: SourceOptions
    fields: dict[str, str]
    _: KW_ONLY
    name: str
    unit: str
    error: ErrorAt

    def clean(
        self,
        frame: pd.DataFrame,
        stamps: np.ndarray,
        rows: np.ndarray,
        state: StreamState,
        report: CleanReport,
    ) -> Bars | None:
        """Validate one chunk whose non-blank rows have these times and row numbers.

        Returns its bars (None when no row is left); what was dropped or changed is added to `report`.
        A close-only file's bars get open = high = low = close.
        """
        blank = frame.isna().all(axis=1).to_numpy()
        if blank.any():
            frame = frame.loc[~blank]
        if len(frame) == 0:
            return None
        values = {name: self._numeric(frame[column], name, rows) for name, column in self.fields.items()}
        if "volume" not in values:
            values["volume"] = np.zeros(len(frame), dtype=np.float64)
        stamps, rows, values = self._apply_nan_policy(stamps, rows, values, state, report)
        if len(stamps) == 0:
            return None
        for name in PRICE_COLUMNS[:3]:
            values.setdefault(name, values["close"].copy())
        for name, array in values.items():
            finite = np.isfinite(array)
            if not finite.all():
                at = int(np.argmin(finite))
                raise self.error(f"non-finite {name} {_num(array[at])}", int(rows[at]))
        for name in (*PRICE_COLUMNS, "adj_close"):
            if name in values and (values[name] <= 0).any():
                at = int(np.argmax(values[name] <= 0))
                raise self.error(f"non-positive {name} price {_num(values[name][at])}", int(rows[at]))
        if (values["volume"] < 0).any():
            at = int(np.argmax(values["volume"] < 0))
            raise self.error(f"negative volume {_num(values['volume'][at])}", int(rows[at]))
        if self.options.price == "adj_close":
            factor = values["adj_close"] / values["close"]
            for name in PRICE_COLUMNS:
                values[name] = values[name] * factor
        report.clipped += self._check_ohlc(values, rows)
        self._check_order(stamps, rows, state)
        bars = Bars(
            timestamp=_owned(stamps),
            open=_owned(values["open"]),
            high=_owned(values["high"]),
            low=_owned(values["low"]),
            close=_owned(values["close"]),
            volume=_owned(values["volume"]),
        )
        return bars

    def _numeric(self, column: pd.Series, name: str, rows: np.ndarray) -> np.ndarray:
        import pandas as pd

        if pd.api.types.is_numeric_dtype(column.dtype) and column.dtype != bool:
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        raw = column.to_numpy(dtype=object)
        present = ~pd.isna(raw)
        bad = np.isnan(numbers) & present
        if bad.any():
            at = int(np.argmax(bad))
            raise self.error(f"non-numeric {name} {raw[at]!r}", int(rows[at]))
        return numbers

    def _apply_nan_policy(
        self,
        stamps: np.ndarray,
        rows: np.ndarray,
        values: dict[str, np.ndarray],
        state: StreamState,
        report: CleanReport,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        missing = {name: np.isnan(array) for name, array in values.items()}
        any_missing = np.logical_or.reduce(list(missing.values()))
        policy = self.options.nan_policy
        if policy == "ffill":
            prior_close = state.last_values.get("close", np.nan)
            for name, array in values.items():
                values[name] = self._forward_fill(name, array, missing[name], rows, state)
            self._fill_prices(values, missing, prior_close, state)
            report.filled += int(any_missing.sum())
            return stamps, rows, values
        if not any_missing.any():
            return stamps, rows, values
        if policy == "error":
            at = int(np.argmax(any_missing))
            name = next(n for n, m in missing.items() if m[at])
            raise self.error(f"missing {name} (nan_policy=error)", int(rows[at]))
        unseen = any_missing.copy()
        for name in _FIELD_ORDER:
            if name in missing:
                first = unseen & missing[name]
                if first.any():
                    key = f"missing {name}"
                    report.dropped[key] = report.dropped.get(key, 0) + int(first.sum())
                    unseen &= ~first
        keep = ~any_missing
        return stamps[keep], rows[keep], {k: v[keep] for k, v in values.items()}

    @staticmethod
    def _fill_prices(
        values: dict[str, np.ndarray], missing: dict[str, np.ndarray], prior_close: float, state: StreamState
    ) -> None:
        """Fill each missing price of a bar from the previous close, keeping the bar valid.

        A filled open or close is clipped into the bar's known [low, high]; a filled high or low is
        widened to contain the bar's other prices.
        """
        names = [name for name in PRICE_COLUMNS if name in values]
        filled_rows = np.flatnonzero(np.logical_or.reduce([missing[name] for name in names]))
        if not filled_rows.size:
            return
        for name in names:
            values[name] = values[name].copy()
        close = values["close"]
        for i in filled_rows:
            previous = float(close[i - 1]) if i else prior_close
            gaps = {name: bool(missing[name][i]) for name in names}
            bar = {name: previous if gaps[name] else float(values[name][i]) for name in names}
            if len(names) == len(PRICE_COLUMNS):
                for name in ("open", "close"):
                    if gaps[name] and not gaps["high"]:
                        bar[name] = min(bar[name], bar["high"])
                    if gaps[name] and not gaps["low"]:
                        bar[name] = max(bar[name], bar["low"])
                if gaps["high"]:
                    bar["high"] = max(bar.values())
                if gaps["low"]:
                    bar["low"] = min(bar.values())
            for name in names:
                values[name][i] = bar[name]
        state.last_values["close"] = float(close[-1])

    def _forward_fill(
        self, name: str, array: np.ndarray, missing: np.ndarray, rows: np.ndarray, state: StreamState
    ) -> np.ndarray:
        n = len(array)
        carried_run = state.missing_run.get(name, 0)
        limit = self.options.ffill_limit
        if name == "volume":
            # A filled bar traded nothing; volume is never carried forward.
            out = np.where(missing, 0.0, array)
        elif missing.any():
            index = np.arange(n)
            last = np.maximum.accumulate(np.where(missing, -1, index))
            run = np.where(last >= 0, index - last, index + 1 + carried_run)
            over = missing & (run > limit)
            if over.any():
                at = int(np.argmax(over))
                raise self.error(f"missing {name} for more than ffill_limit={limit} bars", int(rows[at]))
            no_previous = missing & (last < 0) & (name not in state.last_values)
            if no_previous.any():
                at = int(np.argmax(no_previous))
                raise self.error(f"missing {name} with no earlier bar to fill from", int(rows[at]))
            carried = state.last_values.get(name, np.nan)
            out = np.where(last >= 0, array[np.maximum(last, 0)], carried)
        else:
            out = array
        if n:
            if missing.all():
                state.missing_run[name] = carried_run + n
            else:
                state.missing_run[name] = n - 1 - int(np.flatnonzero(~missing)[-1])
                state.last_values[name] = float(out[-1])
        return out

    def _check_ohlc(self, values: dict[str, np.ndarray], rows: np.ndarray) -> int:
        high, low, open_, close = values["high"], values["low"], values["open"], values["close"]
        inverted = high < low
        if inverted.any():
            at = int(np.argmax(inverted))
            raise self.error(f"high {_num(high[at])} is below low {_num(low[at])}", int(rows[at]))
        upper = np.maximum(open_, close)
        lower = np.minimum(open_, close)
        outside = (upper > high) | (lower < low)
        if not outside.any():
            return 0
        if self.options.ohlc_policy == "clip":
            values["high"] = np.maximum(high, upper)
            values["low"] = np.minimum(low, lower)
            return int(outside.sum())
        at = int(np.argmax(outside))
        raise self.error(
            f"open {_num(open_[at])} or close {_num(close[at])} lies outside "
            f"[low {_num(low[at])}, high {_num(high[at])}] (set ohlc_policy=clip to widen high/low)",
            int(rows[at]),
        )

    def _check_order(self, stamps: np.ndarray, rows: np.ndarray, state: StreamState) -> None:
        if state.last_timestamp is not None and stamps[0] <= state.last_timestamp:
            raise self.error(
                _order_reason(int(stamps[0]), state.last_timestamp, state.last_where), int(rows[0])
            )
        if len(stamps) > 1:
            step = np.diff(stamps)
            bad = step <= 0
            if bad.any():
                at = int(np.argmax(bad)) + 1
                previous = f"{self.unit} {int(rows[at - 1])}"
                raise self.error(_order_reason(int(stamps[at]), int(stamps[at - 1]), previous), int(rows[at]))
        state.last_timestamp = int(stamps[-1])
        state.last_where = f"{self.name}, {self.unit} {int(rows[-1])}"


_FIELD_ORDER = (*PRICE_COLUMNS, "adj_close", "volume")


def _order_reason(stamp: int, previous: int, where: str) -> str:
    kind = "duplicated" if stamp == previous else "out-of-order"
    return f"{kind} timestamp {show_time(stamp)}: not after {show_time(previous)} ({where})"


def _owned(array: np.ndarray) -> np.ndarray:
    """Return the array, copied when it is a view that would keep a whole parsed chunk alive."""
    return array if array.base is None and array.flags.c_contiguous else np.ascontiguousarray(array).copy()


def _num(value: float) -> str:
    return repr(float(value))
