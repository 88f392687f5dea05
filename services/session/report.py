"""Write a session's report for people: report.md with the evaluation tables and PNG plots beside it.

Reads what the run folder already holds (eval-episode-<k>.csv, metrics.csv, config.yaml); matplotlib
is imported only while plotting, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.session.figures import TABLE_ROWS, format_cell
from services.session.portfolio_report import portfolio_section
from services.session.recorder import recorded_events
from services.session.report_files import atomic_text, floats, read_csv, save_png

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
LATEST_PLOT = "equity.png"
"""The latest evaluated episode's equity (position changes marked), position held and drawdown, agent vs
buy & hold, in the run folder itself."""
TRAINING_CURVES = (
    ("rollout/ep_rew_mean", "episode reward (mean)"),
    ("train/loss", "loss"),
    ("train/policy_gradient_loss", "policy gradient loss"),
    ("train/value_loss", "value loss"),
    ("train/entropy_loss", "entropy loss"),
    ("train/approx_kl", "approx KL"),
    ("train/explained_variance", "explained variance"),
    ("train/actor_loss", "actor loss"),
    ("train/critic_loss", "critic loss"),
    ("train/ent_coef", "entropy coefficient"),
    ("time/fps", "steps per second"),
)
"""metrics.csv columns plotted as training curves, when they hold values."""
CONFIG_SUMMARY = (
    ("data.source.path", "data"),
    ("data.split.mode", "split"),
    ("env.n_envs", "envs"),
    ("env.window", "window (bars)"),
    ("env.action", "action"),
    ("env.fill", "fill"),
    ("env.commission_bps", "commission (bps)"),
    ("env.slippage_bps", "slippage (bps)"),
    ("env.reward", "reward"),
    ("model.algorithm", "algorithm"),
    ("model.policy", "policy"),
    ("model.net_arch", "network"),
    ("model.device", "device"),
    ("training.episodes", "episodes"),
    ("training.steps_per_episode", "steps per episode"),
    ("training.seed", "seed"),
)
"""Keys of config.yaml summarised in the report."""
MAX_MARKERS = 300
"""Most position changes marked on an equity curve; with more, only the position panel shows them."""
MARKERS = (
    ("long", "^", "tab:green", "to long"),
    ("short", "v", "tab:red", "to short"),
    ("flat", "o", "grey", "to flat"),
)
"""How a change of position is marked on the equity curve: the side it changes to, marker, colour, label."""


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Return the drawdown of an equity curve at every bar: equity / running peak - 1 (zero or less)."""
    if not len(equity):
        return equity
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, equity / peak - 1.0, 0.0)


def _closes_only(run_dir: Path) -> bool:
    """Tell whether the session's data had closes only (its DataLoaded event): fills were at next closes."""
    loaded = next(recorded_events(run_dir / "events.jsonl", "DataLoaded"), None)
    return bool(loaded and loaded.get("close_only"))


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def position_changes(position: np.ndarray) -> dict[str, np.ndarray]:
    """Return the rows at which the position changes, by the side it changes to (long, short, flat).

    Row 0 is compared with flat, the position every evaluation starts from.
    """
    held = np.asarray(position, dtype=np.float64)
    before = np.concatenate(([0.0], held[:-1]))
    rows = np.flatnonzero(held != before)
    side = held[rows]
    return {"long": rows[side > 0], "short": rows[side < 0], "flat": rows[side == 0]}


class _EpisodeSeries:
    """The equity curves of one evaluated episode, with the x axis to draw them on."""

    def __init__(self, episode: int, columns: Mapping[str, list[str]]) -> None:
        self.episode = episode
        self.equity = floats(columns["equity"])
        # A portfolio's CSV names its benchmark and exposure for what they are (equal weight, sum |w|).
        self.bench = floats(columns.get("buy_and_hold_equity") or columns["equal_weight_equity"])
        position = floats(columns.get("position") or columns.get("gross_exposure", []))
        self.position = position if len(position) == len(self.equity) else None
        stamps = columns.get("timestamp", [])
        self.x: Any = np.arange(len(self.equity))
        self.xlabel = "eval bar"
        if stamps and all(stamps):
            try:
                self.x = np.asarray(stamps, dtype="datetime64[s]")
                self.xlabel = "time"
            except ValueError:
                pass

    @property
    def panels(self) -> tuple[str, ...]:
        """Return the panels of the equity figure: the position under the equity when it is recorded."""
        return ("equity", "position") if self.position is not None else ("equity",)

    def draw(self, ax: Any, kind: str) -> None:
        """Draw one panel: "equity" (with the position changes), "position" or "drawdown"."""
        if kind == "equity":
            ax.plot(self.x, self.equity, label="agent", linewidth=1.2)
            ax.plot(self.x, self.bench, label="buy & hold", linewidth=1.0, alpha=0.8)
            title = f"Episode {self.episode}: equity on the eval window, agent vs buy & hold"
            if self.position is not None:
                title += self._mark_changes(ax)
            ax.set_ylabel("equity (start = 1)")
            ax.set_title(title)
        elif kind == "position":
            assert self.position is not None
            ax.step(self.x, self.position, where="post", color="black", linewidth=0.6)
            for above, colour in ((True, "tab:green"), (False, "tab:red")):
                where = self.position > 0 if above else self.position < 0
                ax.fill_between(self.x, self.position, 0, where=where, step="post", color=colour, alpha=0.3)
            ax.set_ylabel("position held")
            levels = np.unique(self.position)
            if len(levels) <= 5:
                ax.set_yticks(np.union1d(levels, [0.0]))
        else:
            ax.fill_between(self.x, drawdown(self.equity) * 100, 0, label="agent", alpha=0.5)
            ax.plot(self.x, drawdown(self.bench) * 100, label="buy & hold", linewidth=1.0, color="tab:orange")
            ax.set_ylabel("drawdown (%)")
            ax.set_title(f"Episode {self.episode}: drawdown on the eval window")
        ax.set_xlabel(self.xlabel)
        ax.grid(alpha=0.3)
        if kind != "position":
            ax.legend(loc="best", fontsize=8 if kind == "equity" else None)

    def _mark_changes(self, ax: Any) -> str:
        """Mark each change of position on the agent's curve; return a note for the title when too many."""
        assert self.position is not None
        changes = position_changes(self.position)
        count = sum(len(rows) for rows in changes.values())
        if count > MAX_MARKERS:
            return f"\n{count:,} position changes: too many to mark, see the position panel"
        size = 36 if count <= 60 else 16
        for side, marker, colour, label in MARKERS:
            rows = changes[side]
            if len(rows):
                ax.scatter(
                    self.x[rows],
                    self.equity[rows],
                    marker=marker,
                    color=colour,
                    s=size,
                    zorder=3,
                    label=f"{label} ({len(rows):,})",
                    edgecolors="none",
                )
        return ""


def _plot_episode(figure: Any, plots: Path, series: _EpisodeSeries) -> list[str]:
    """Write the equity (over the position) and drawdown PNGs of one episode; return their names."""
    names = []
    for panels in (series.panels, ("drawdown",)):
        fig = _draw_panels(
            figure(figsize=(9, 4 + 1.5 * (len(panels) - 1)), layout="constrained"), series, panels
        )
        name = f"{panels[0]}-episode-{series.episode}.png"
        save_png(fig, plots / name)
        names.append(f"{PLOTS_DIR}/{name}")
    return names


def _draw_panels(fig: Any, series: _EpisodeSeries, panels: Sequence[str]) -> Any:
    """Draw the panels one under the other on a shared x axis (the position panel a third as tall)."""
    ratios = [1 if panel == "position" else 3 for panel in panels]
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, height_ratios=ratios)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        series.draw(ax, panel)
    for ax in axes[:-1]:
        ax.set_xlabel("")
    return fig


def _plot_latest(figure: Any, run_dir: Path, series: _EpisodeSeries) -> str:
    """Write equity.png: an episode's equity (with its trades), position and drawdown; return its name."""
    panels = (*series.panels, "drawdown")
    fig = _draw_panels(figure(figsize=(9, 7 + 1.5 * (len(panels) - 2)), layout="constrained"), series, panels)
    save_png(fig, run_dir / LATEST_PLOT)
    return LATEST_PLOT


def _plot_training(figure: Any, plots: Path, columns: Mapping[str, list[str]]) -> str:
    """Write training.png from metrics.csv; return its name, or "" when there is nothing to plot."""
    if not columns.get("total_steps"):
        return ""
    steps = floats(columns["total_steps"])
    curves = []
    for key, label in TRAINING_CURVES:
        values = floats(columns.get(key, []))
        if len(values) == len(steps) and np.isfinite(values).any():
            curves.append((label, values))
    if not curves:
        return ""
    episodes = floats(columns.get("episode", []))
    starts = [steps[i] for i in range(1, len(episodes)) if episodes[i] != episodes[i - 1]]
    ncols = 2 if len(curves) > 1 else 1
    nrows = math.ceil(len(curves) / ncols)
    fig = figure(figsize=(6 * ncols, 2.6 * nrows), layout="constrained")
    for i, (label, values) in enumerate(curves):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], linewidth=1.0)
        for start in starts:
            ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("model steps", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    name = "training.png"
    save_png(fig, plots / name)
    return f"{PLOTS_DIR}/{name}"


def _markdown(
    *,
    name: str,
    model_id: str,
    config: Mapping[str, Any],
    evaluations: Sequence[Mapping[str, Any]],
    episode_plots: Mapping[int, list[str]],
    latest_plot: tuple[int, str] | None,
    training_plot: str,
    asset_sections: Mapping[int, list[str]],
    figures: bool = True,
    closes_only: bool = False,
) -> str:
    lines = [f"# Session {name}", ""]
    lines.append(f"Model `{model_id or '-'}`: one model trained and evaluated across every episode.")
    lines.append("")
    if config:
        lines += ["## Configuration", "", "| setting | value |", "| --- | --- |"]
        for key, label in CONFIG_SUMMARY:
            value = _lookup(config, key)
            if value is not None and value != "":
                note = " (the data has closes only: each fill at the next bar's close)"
                lines.append(f"| {label} | `{value}`{note if key == 'env.fill' and closes_only else ''} |")
        lines += ["", "The full resolved configuration is in [config.yaml](config.yaml).", ""]
    lines += ["## Evaluation on the eval window: agent vs buy & hold", ""]
    if not evaluations:
        lines += ["No episode was evaluated.", ""]
    else:
        if latest_plot is not None:
            episode, plot = latest_plot
            lines += [f"![Episode {episode}: equity and drawdown, agent vs buy & hold]({plot})", ""]
        lines += [
            "| episode | return agent | return B&H | Sharpe agent | Sharpe B&H "
            "| max drawdown agent | max drawdown B&H | trades |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for ev in evaluations:
            a, b = ev["agent"], ev["buy_and_hold"]
            lines.append(
                f"| {ev['episode']} | {format_cell(a.get('total_return'), 'pct')} "
                f"| {format_cell(b.get('total_return'), 'pct')} | {format_cell(a.get('sharpe'), 'num')} "
                f"| {format_cell(b.get('sharpe'), 'num')} | {format_cell(a.get('max_drawdown'), 'pct')} "
                f"| {format_cell(b.get('max_drawdown'), 'pct')} | {format_cell(a.get('trades'), 'int')} |"
            )
        lines.append("")
    for ev in evaluations:
        episode = int(ev["episode"])
        a, b = ev["agent"], ev["buy_and_hold"]
        lines += [f"### Episode {episode}", ""]
        if int(ev.get("ruined_at", -1)) >= 0:
            lines += [
                f"The agent was ruined at eval bar {ev['ruined_at']} (equity at or below `env.ruin_equity`): "
                "it was flattened there and stayed flat to the end of the window.",
                "",
            ]
        lines += ["| metric | agent | buy & hold |", "| --- | ---: | ---: |"]
        for key, label, kind in TABLE_ROWS:
            if key in a or key in b:
                ours, theirs = format_cell(a.get(key), kind), format_cell(b.get(key), kind)
                lines.append(f"| {label} | {ours} | {theirs} |")
        lines.append("")
        plots = episode_plots.get(episode, [])
        for plot in plots:
            title = "equity" if "equity" in plot else "drawdown"
            lines.append(f"![Episode {episode} {title}]({plot})")
        if plots:
            lines.append("")
        lines += asset_sections.get(episode, [])
        lines += [f"Per-bar records: [eval-episode-{episode}.csv](eval-episode-{episode}.csv)", ""]
    lines += ["## Training", ""]
    if training_plot:
        lines += [f"![Training curves]({training_plot})", ""]
    elif not figures:
        lines += ["No figures: this session ran with `session.figures: false`.", ""]
    else:
        lines += ["No training values were recorded.", ""]
    lines += [
        "Every value per update is in [metrics.csv](metrics.csv); TensorBoard logs in `tensorboard/`.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    run_dir: Path, *, name: str, model_id: str, evaluations: list[dict[str, Any]], figures: bool = True
) -> Path:
    """Write report.md and its PNGs; return its path.

    The PNGs: equity.png in the run folder (the equity with its position changes marked, the position
    held and the drawdown of the latest episode with per-bar records, agent vs buy & hold), and under
    plots/ the equity over the position and the drawdown of every episode, and the training curves.

    Args:
        evaluations: as in SessionState.to_dict()["evaluations"]: episode, agent and buy_and_hold metrics.
        figures: False writes report.md alone, its tables and links without any PNG (and without
            importing matplotlib): `session.figures: false`, as a study's trial sessions run.
    """
    figure = _figure_maker() if figures else None
    plots = run_dir / PLOTS_DIR
    if figure is not None:
        plots.mkdir(exist_ok=True)
    episode_plots: dict[int, list[str]] = {}
    asset_sections: dict[int, list[str]] = {}
    latest: _EpisodeSeries | None = None
    for ev in evaluations:
        episode = int(ev["episode"])
        columns = read_csv(run_dir / f"eval-episode-{episode}.csv")
        if columns.get("equity") and ("buy_and_hold_equity" in columns or "equal_weight_equity" in columns):
            latest = _EpisodeSeries(episode, columns)
            if figure is not None:
                episode_plots[episode] = _plot_episode(figure, plots, latest)
            if "equal_weight_equity" in columns:
                where = plots if figure is not None else None
                asset_sections[episode] = portfolio_section(
                    figure, where, episode, columns, latest.x, latest.xlabel
                )
        else:
            logger.warning("report: no per-bar records for episode %d; no plots", episode)
    latest_plot: tuple[int, str] | None = None
    training_plot = ""
    if figure is not None:
        if latest is not None:
            latest_plot = (latest.episode, _plot_latest(figure, run_dir, latest))
        training_plot = _plot_training(figure, plots, read_csv(run_dir / "metrics.csv"))
    config: Mapping[str, Any] = {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, Mapping) else {}
    report = run_dir / "report.md"
    text = _markdown(
        name=name,
        model_id=model_id,
        config=config,
        evaluations=evaluations,
        episode_plots=episode_plots,
        latest_plot=latest_plot,
        training_plot=training_plot,
        asset_sections=asset_sections,
        closes_only=_closes_only(run_dir),
        figures=figure is not None,
    )
    atomic_text(report, text)
    return report


def _figure_maker() -> Any:
    """Return a function that makes a bare Figure on an Agg canvas (no pyplot, so no global figure
    registry and no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(**kwargs: Any) -> Any:
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig

    return figure
