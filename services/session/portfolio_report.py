"""The portfolio part of a session's report: the weights-over-time plot and the per-asset table, both
from the columns of a portfolio eval CSV (docs/PORTFOLIO.md, section 5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.session.figures import format_cell
from services.session.report_files import floats, save_png

MAX_WEIGHT_BANDS = 12
"""Most bands of a weights-over-time plot: with more assets, the largest holdings and one band of the rest."""


def asset_table(columns: Mapping[str, list[str]]) -> list[tuple[str, float, float, float, float]]:
    """Return each asset's (symbol, contribution, costs, turnover, mean weight) from a portfolio eval CSV.

    Contribution is the sum of the asset's profits before costs, costs and turnover sums over the rows,
    the mean weight over rows 1..n (docs/PORTFOLIO.md, section 5); all from the CSV's own columns.
    """
    symbols = [name.split(":", 1)[1] for name in columns if name.startswith("weight:")]
    rows = []
    for symbol in symbols:
        weights = floats(columns[f"weight:{symbol}"])
        rows.append(
            (
                symbol,
                float(floats(columns[f"pnl:{symbol}"]).sum()),
                float(floats(columns[f"cost:{symbol}"]).sum()),
                float(floats(columns[f"traded:{symbol}"]).sum()),
                float(weights[1:].mean()) if len(weights) > 1 else 0.0,
            )
        )
    return rows


def weight_bands(weights: np.ndarray, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return the long and short bands [bands, rows] of a weights-over-time plot and their labels.

    With at most MAX_WEIGHT_BANDS assets each has its band; with more, the MAX_WEIGHT_BANDS - 1 largest
    holdings by mean absolute weight (over rows 1..n, after the first trade) have theirs and the other
    assets share the last one, so every row's bands still add up to the weights held.
    """
    longs, shorts, labels = weights.clip(0.0, None), weights.clip(None, 0.0), list(symbols)
    if len(labels) <= MAX_WEIGHT_BANDS:
        return longs, shorts, labels
    order = np.argsort(-np.abs(weights[:, 1:]).mean(axis=1), kind="stable")
    shown, rest = order[: MAX_WEIGHT_BANDS - 1], order[MAX_WEIGHT_BANDS - 1 :]
    labels = [labels[i] for i in shown] + [f"the other {len(rest)} assets"]
    longs = np.vstack([longs[shown], longs[rest].sum(axis=0)])
    shorts = np.vstack([shorts[shown], shorts[rest].sum(axis=0)])
    return longs, shorts, labels


def portfolio_section(
    figure: Any,
    plots: Path | None,
    episode: int,
    columns: Mapping[str, list[str]],
    x: Any,
    xlabel: str,
) -> list[str]:
    """Write a portfolio episode's weights-over-time PNG (none when plots is None); return its markdown and
    contribution table."""
    table = asset_table(columns)
    if plots is None:
        return _asset_lines(table)
    fig = figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    weights = np.vstack([floats(columns[f"weight:{row[0]}"]) for row in table])
    longs, shorts, labels = weight_bands(weights, [row[0] for row in table])
    title = f"Episode {episode}: weights held at each close (the rest is cash)"
    if len(labels) < len(table):
        shown = len(labels) - 1
        title += f";\nthe {shown} largest holdings, the other {len(table) - shown} assets as one band"
    # One colour a band (matplotlib's default cycle has 10, so bands 11 and 12 would repeat two); the
    # band of the other assets, when there is one, is grey.
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    colors: list[Any] = [palette(i % palette.N) for i in range(len(labels))]
    if len(labels) < len(table):
        colors[-1] = (0.75, 0.75, 0.75, 1.0)
    ax.stackplot(x, longs, labels=labels, colors=colors, linewidth=0)
    if (shorts < 0).any():
        ax.stackplot(x, shorts, colors=colors, linewidth=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weight")
    ax.legend(loc="upper left", fontsize=6, ncol=max(1, len(labels) // 10), bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    name = f"{plots.name}/weights-episode-{episode}.png"
    save_png(fig, plots.parent / name)
    return [f"![Episode {episode} weights]({name})", "", *_asset_lines(table)]


def _asset_lines(table: list[tuple[str, float, float, float, float]]) -> list[str]:
    """Return the markdown of a portfolio episode's per-asset contribution table."""
    lines = [
        "| asset | contribution | costs | turnover | mean weight |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for symbol, contribution, costs, turnover, mean_weight in sorted(table, key=lambda row: -row[1]):
        lines.append(
            f"| {symbol} | {format_cell(contribution, 'pct')} | {format_cell(costs, 'pct')} "
            f"| {format_cell(turnover, 'num')} | {format_cell(mean_weight, 'pct')} |"
        )
    return [*lines, ""]
