"""How the console and the report show a metric: one row table and one cell format for both."""

from __future__ import annotations

import math
from typing import Any

TABLE_ROWS = (
    ("total_return", "Total return", "pct"),
    ("annualised_return", "Annualised return", "pct"),
    ("annualised_volatility", "Annualised volatility", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration", "Max drawdown duration (bars)", "int"),
    ("calmar", "Calmar", "num"),
    ("turnover", "Turnover", "num"),
    ("costs_paid", "Costs paid", "pct"),
    ("trades", "Trades", "int"),
    ("win_rate", "Win rate", "pct"),
    ("exposure", "Exposure", "pct"),
)
"""The evaluation metrics shown, in this order: (key, label, kind), kind one of pct, num, int."""


def format_cell(value: Any, kind: str) -> str:
    """Format one metric: a percentage, an integer or a number; "-" when missing or not finite."""
    if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value):d}"
    return f"{value:.3f}"
