"""Write a session's outputs for people and tools: events.jsonl, metrics.csv and per-episode eval CSVs."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from messages import EvaluationReport, Message, TrainingMetrics, to_json_dict

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "time/fps",
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "rollout/exploration_rate",
    "train/loss",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/entropy_loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
    "train/actor_loss",
    "train/critic_loss",
    "train/ent_coef",
    "train/ent_coef_loss",
    "train/learning_rate",
    "train/n_updates",
)
"""Columns of metrics.csv after ts, episode and total_steps: the SB3 logger keys of every algorithm."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RunRecorder:
    """Append every event to events.jsonl and training values to metrics.csv; both files append on resume."""

    def __init__(self, run_dir: Path, *, metrics: bool = True) -> None:
        """Open the files; metrics=False records the events alone (a study's, which trains nothing)."""
        self._run_dir = run_dir
        self._events: IO[str] = (run_dir / "events.jsonl").open("a", encoding="utf-8")
        self._metrics_file: IO[str] | None = None
        if not metrics:
            return
        metrics_path = run_dir / "metrics.csv"
        new = not metrics_path.exists() or metrics_path.stat().st_size == 0
        self._metrics_file = metrics_path.open("a", encoding="utf-8", newline="")
        self._metrics = csv.writer(self._metrics_file)
        if new:
            self._metrics.writerow(["ts", "episode", "total_steps", *METRIC_COLUMNS])
            self._metrics_file.flush()

    def __call__(self, seq: int, msg: Message) -> None:
        """Record one event (the hub's sink signature)."""
        record = to_json_dict(msg)
        record["seq"] = seq
        record["actor"] = record.pop("sender")
        self._events.write(json.dumps(_json_safe(record), separators=(",", ":")) + "\n")
        self._events.flush()
        if isinstance(msg, TrainingMetrics) and self._metrics_file is not None:
            row = [f"{msg.ts:.3f}", msg.episode, msg.total_steps]
            row += [_fmt(msg.values.get(key)) for key in METRIC_COLUMNS]
            self._metrics.writerow(row)
            self._metrics_file.flush()

    def close(self) -> None:
        """Close the files."""
        self._events.close()
        if self._metrics_file is not None:
            self._metrics_file.close()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


PORTFOLIO_ASSET_COLUMNS = (
    ("weight", "weights"),
    ("close", "asset_close"),
    ("tradable", "tradable"),
    ("traded", "traded"),
    ("cost", "costs"),
    ("pnl", "pnl"),
)
"""A portfolio eval CSV's per-asset columns, `<name>:<symbol>`, and the report arrays they hold."""


def write_eval_csv(run_dir: Path, report: EvaluationReport) -> Path:
    """Write eval-episode-<k>.csv: one row per eval bar, atomically, numbers in full float precision."""
    path = run_dir / f"eval-episode-{report.episode}.csv"
    tmp = path.with_suffix(".tmp")
    stamps = np.asarray(report.timestamp, dtype="datetime64[ns]")
    if report.symbols:
        _write_portfolio_csv(tmp, report, stamps)
        os.replace(tmp, path)
        return path
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "close", "position", "equity", "buy_and_hold_equity"])
        for i in range(len(report.close)):
            writer.writerow(
                [
                    np.datetime_as_string(stamps[i], unit="s") if len(stamps) else "",
                    repr(float(report.close[i])),
                    repr(float(report.position[i])),
                    repr(float(report.equity[i])),
                    repr(float(report.bh_equity[i])),
                ]
            )
    os.replace(tmp, path)
    return path


def _write_portfolio_csv(tmp: Path, report: EvaluationReport, stamps: np.ndarray) -> None:
    """Write a portfolio's rows: equity, equal-weight equity, gross exposure, then each asset's columns."""
    header = ["timestamp", "equity", "equal_weight_equity", "gross_exposure"]
    header += [f"{name}:{symbol}" for name, _ in PORTFOLIO_ASSET_COLUMNS for symbol in report.symbols]
    arrays = [np.asarray(getattr(report, field), dtype=np.float64) for _, field in PORTFOLIO_ASSET_COLUMNS]
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i in range(len(report.equity)):
            row = [
                np.datetime_as_string(stamps[i], unit="s") if len(stamps) else "",
                repr(float(report.equity[i])),
                repr(float(report.bh_equity[i])),
                repr(float(report.position[i])),
            ]
            for array in arrays:
                row += [repr(v) for v in array[i].tolist()]
            writer.writerow(row)


def recorded_events(events_path: Path, type_name: str) -> Iterator[dict[str, Any]]:
    """Yield the events of one type that a run's events.jsonl holds, in order; a line cut short by a
    crash, or not an event, is skipped (no file: nothing)."""
    if not events_path.is_file():
        return
    marker = f'"{type_name}"'
    with events_path.open(encoding="utf-8") as fh:
        for line in fh:
            if marker not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == type_name:
                yield event
