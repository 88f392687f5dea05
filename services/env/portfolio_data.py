"""Hold a portfolio env's data: features [T, M, F], prices [T, M] and the tradable mask, swapped in place."""

from __future__ import annotations

import numpy as np

from services.env.options import EnvOptions


class PortfolioData:
    """Own a portfolio env's feature and price buffers."""

    def __init__(self, options: EnvOptions, *, sequential: bool) -> None:
        self._options = options
        self._sequential = sequential
        self.n_bars = 0
        self.n_assets = 0
        self.n_features = 0
        # [T, 3M]: the gap and body returns and the fill mask (1.0 or 0.0) of the step into bar t (row t),
        # so one gather serves a step.
        self.moves = np.empty((0, 0))
        self.close = np.empty((0, 0))
        self.tradable = np.empty((0, 0), dtype=bool)
        self.all_fill = np.empty(0, dtype=bool)
        self.windows = np.empty((0, 0), dtype=np.float32)
        # The features of every bar, bar-major, then n_assets + 1 zeros: an observation's window followed
        # by room for its weights is one slice of it, even at the last bar.
        self.flat = np.empty(0, dtype=np.float32)

    def update(
        self, features: np.ndarray, open_: np.ndarray, close: np.ndarray, tradable: np.ndarray
    ) -> None:
        """Validate and copy new data into the buffers."""
        present = self._validate(features, open_, close, tradable)
        n_bars, n_assets, n_features = features.shape
        self.n_bars, self.n_assets, self.n_features = n_bars, n_assets, n_features
        bar_size = n_assets * n_features
        self.flat = np.zeros(n_bars * bar_size + n_assets + 1, dtype=np.float32)
        flat = self.flat[: n_bars * bar_size]
        np.copyto(flat, features.reshape(-1))
        np.nan_to_num(flat, copy=False, nan=0.0)
        width = self._options.window * bar_size
        self.windows = np.lib.stride_tricks.sliding_window_view(flat, width)[::bar_size]
        # The last close at or before each bar: an asset without a bar keeps its price, never a later one.
        index = np.where(present, np.arange(n_bars)[:, None], -1)
        np.maximum.accumulate(index, axis=0, out=index)
        last = np.where(index >= 0, close[np.maximum(index, 0), np.arange(n_assets)], np.nan)
        self.close = last
        self.tradable = tradable.copy()
        gap = np.zeros((n_bars, n_assets))
        body = np.zeros((n_bars, n_assets))
        fill = np.zeros((n_bars, n_assets), dtype=bool)
        arrived = present[1:] & np.isfinite(last[:-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            if self._options.fill == "next_open":
                gap[1:] = np.where(arrived, open_[1:] / last[:-1] - 1.0, 0.0)
                body[1:] = np.where(present[1:], close[1:] / open_[1:] - 1.0, 0.0)
                fill[1:] = tradable[:-1] & present[1:]
            else:
                body[1:] = np.where(arrived, close[1:] / last[:-1] - 1.0, 0.0)
                fill[1:] = tradable[:-1]
        self.moves = np.concatenate([gap, body, fill.astype(np.float64)], axis=1)
        self.all_fill = np.asarray(fill.all(axis=1))

    def _validate(
        self, features: np.ndarray, open_: np.ndarray, close: np.ndarray, tradable: np.ndarray
    ) -> np.ndarray:
        """Raise ValueError unless the arrays are data this env can trade; return where bars exist."""
        if not isinstance(features, np.ndarray) or features.ndim != 3 or features.dtype != np.float32:
            raise ValueError(
                f"update_data: features must be float32 [T, M, F], got {getattr(features, 'shape', None)}"
            )
        n_bars, n_assets, n_features = features.shape
        if n_assets < 1 or n_features < 1:
            raise ValueError(f"update_data: need at least one asset and one feature, got {features.shape}")
        for name, array in (("open_", open_), ("close", close)):
            if (
                not isinstance(array, np.ndarray)
                or array.shape != (n_bars, n_assets)
                or array.dtype != np.float64
            ):
                raise ValueError(f"update_data: {name} must be float64 [{n_bars}, {n_assets}]")
        if (
            not isinstance(tradable, np.ndarray)
            or tradable.shape != (n_bars, n_assets)
            or tradable.dtype != bool
        ):
            raise ValueError(f"update_data: tradable must be bool [{n_bars}, {n_assets}]")
        present = np.isfinite(open_) & np.isfinite(close)
        if (np.isfinite(open_) != np.isfinite(close)).any():
            raise ValueError("update_data: open_ and close must have bars at the same places")
        if (open_[present] <= 0).any() or (close[present] <= 0).any():
            raise ValueError("update_data: prices must be positive")
        if (tradable & ~present).any():
            raise ValueError("update_data: an asset is tradable at a bar where it has no price")
        if not np.isfinite(features[tradable]).all():
            raise ValueError("update_data: features must be finite where an asset is tradable")
        if self.n_assets and (n_assets, n_features) != (self.n_assets, self.n_features):
            raise ValueError(
                f"update_data: {n_assets} assets x {n_features} features, but this env was built for "
                f"{self.n_assets} x {self.n_features}"
            )
        needed = self._options.window + 1 if self._sequential else self._options.min_bars
        if n_bars < needed:
            rule = "window + 1" if self._sequential else "window + episode_length"
            raise ValueError(f"update_data: need at least {rule} = {needed} bars, got {n_bars}")
        return present

    def start_bounds(self) -> tuple[int, int]:
        """Return the lowest and highest start bar of an episode, both inclusive."""
        low = self._options.window - 1
        if self._sequential:
            return low, low
        return low, self.n_bars - 1 - self._options.episode_length
