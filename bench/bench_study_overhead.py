"""Measure a study's start-up overhead per trial: its wall time minus its time in training and evaluation.

Run from the repository root:
    python bench/bench_study_overhead.py                      # fork server, then fresh interpreters
    python bench/bench_study_overhead.py --modes fork --trials 4 --seeds 2

Each mode runs `run.py tune` on a tiny PPO (the smoke tests' budget: 4 envs, window 8, net [8], 1,024
steps per episode, 2 episodes) with learning_rate and net_arch searched, no lockbox, in a temporary runs
folder. "fork" is the default of `run.py tune` (sessions and actors forked from a server that imported
their libraries once); "fresh" is `--no-fork-server` (every session and actor a new interpreter).

Definitions, from the study's storage and each session's events.jsonl:
- trial wall: the trial's datetime_complete - datetime_start (Optuna);
- inside: for every seed's session and episode, the time from the model being ready for the episode
  (ModelCreated for the first, ModelReused for the others) to that episode's EvaluationFinished: training,
  its checkpoint and the evaluation;
- start-up overhead per trial = trial wall - the sum of inside over its seeds and episodes.
The breakdown per session (means): SessionStarted to EpisodeStarted (actors up, data loaded and
streamed); to ModelCreated (the model built); the last EvaluationFinished to SessionFinished; and
SessionFinished to the next seed's SessionStarted (report.md, the actors' stop, the launcher's exit, the
tune worker noticing, the next launcher's start). Per trial: its start to its first SessionStarted
(sampling, the trial's attributes stored, the first launcher's start) and its last SessionFinished to
its end (that session's exit, reading the eval CSVs, the results stored). No file time is used: a
session's stderr log, made just before its launcher starts, is written to later, so its mtime is not
the launch (it put the launch after SessionStarted once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "training.piece_steps=512",
    "env.n_envs=4",
    "env.window=8",
    "env.episode_length=64",
    "model.net_arch=[8]",
    "model.hyperparams.n_steps=64",
    "model.hyperparams.batch_size=64",
    "model.hyperparams.n_epochs=1",
]
SPACE = (
    "model.hyperparams.learning_rate: {log_float: [1.0e-4, 1.0e-3]}\n"
    "model.net_arch: {categorical: [[8], [16]]}\n"
)


def run_study(
    folder: Path, mode: str, trials: int, seeds: int, episodes: int, steps: int
) -> tuple[Path, float]:
    """Run one study in folder; return its study folder and the tune command's wall time."""
    space = folder / "space.yaml"
    space.write_text(SPACE)
    command = [sys.executable, str(ROOT / "run.py"), "tune", "--space", str(space), "--study", mode]
    command += ["--trials", str(trials), "--seeds", str(seeds), "--lockbox", "0", "--top", "0"]
    for text in [*TINY, f"training.steps_per_episode={steps}", f"training.episodes={episodes}"]:
        command += ["--set", text]
    command += ["--set", f"session.runs_dir={folder / 'runs'}"]
    if mode == "fresh":
        command.append("--no-fork-server")
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"run.py tune ({mode}) exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return folder / "runs" / mode, wall


def events(run_dir: Path) -> list[dict[str, Any]]:
    """Return a session's events."""
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def first(found: list[dict[str, Any]], kind: str, **fields: Any) -> float:
    """Return the time of the first event of a type (with the given fields)."""
    for event in found:
        if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
            return float(event["ts"])
    raise LookupError(f"no {kind} {fields}")


def inside(found: list[dict[str, Any]]) -> float:
    """Return a session's time in training and evaluation: model ready to EvaluationFinished per episode."""
    total = 0.0
    for event in found:
        if event["type"] != "EvaluationFinished":
            continue
        episode = event["episode"]
        ready = first(found, "ModelCreated") if episode == 1 else first(found, "ModelReused", episode=episode)
        total += float(event["ts"]) - ready
    return total


def measure(study_dir: Path, mode: str) -> dict[str, Any]:
    """Return the per-trial figures and the per-session breakdown of one study."""
    import optuna

    study = optuna.load_study(study_name=mode, storage=f"sqlite:///{study_dir / 'study.db'}")
    trials: list[dict[str, Any]] = []
    parts: dict[str, list[float]] = {k: [] for k in ("actors", "model", "finish", "between sessions")}
    tune: dict[str, list[float]] = {"before": [], "after": []}
    for trial in study.get_trials():
        if trial.datetime_start is None or trial.datetime_complete is None:
            continue
        start, end = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
        folder = study_dir / f"trial-{trial.number}"
        seeds = sorted(p for p in folder.glob("seed-*") if p.is_dir())
        spent = 0.0
        previous = start
        for index, seed in enumerate(seeds):
            found = events(seed)
            spent += inside(found)
            started = first(found, "SessionStarted")
            finished = first(found, "SessionFinished")
            last_eval = max(float(e["ts"]) for e in found if e["type"] == "EvaluationFinished")
            (tune["before"] if index == 0 else parts["between sessions"]).append(started - previous)
            parts["actors"].append(first(found, "EpisodeStarted", episode=1) - started)
            parts["model"].append(first(found, "ModelCreated") - first(found, "EpisodeStarted", episode=1))
            parts["finish"].append(finished - last_eval)
            previous = finished
        tune["after"].append(end - previous)
        trials.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "seeds": len(seeds),
                "wall_s": end - start,
                "inside_s": spent,
                "overhead_s": end - start - spent,
            }
        )
    return {
        "trials": trials,
        "sessions": {k: statistics.mean(v) for k, v in parts.items() if v},
        "trial_bookkeeping": {k: statistics.mean(v) for k, v in tune.items() if v},
    }


def main() -> None:
    """Run the studies and print the figures (and the load average before and after)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="fork,fresh", help="comma-separated: fork, fresh")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-study-") as scratch:
        for mode in args.modes.split(","):
            folder = Path(scratch) / mode
            folder.mkdir()
            study_dir, wall = run_study(folder, mode, args.trials, args.seeds, args.episodes, args.steps)
            figures = measure(study_dir, mode)
            figures["tune_wall_s"] = wall
            results[mode] = figures
            print(f"{mode}: run.py tune took {wall:.1f} s for {args.trials} trials x {args.seeds} seeds")
            print("| trial | state | wall | training + evaluation | start-up overhead |")
            print("| --- | --- | ---: | ---: | ---: |")
            for t in figures["trials"]:
                print(
                    f"| {t['trial']} | {t['state'].lower()} | {t['wall_s']:.2f} s | {t['inside_s']:.2f} s "
                    f"| {t['overhead_s']:.2f} s |"
                )
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in figures["sessions"].items())
            print(f"per session (means): {parts}")
            tune = figures["trial_bookkeeping"]
            print(
                f"per trial (means): trial start to its first SessionStarted {tune['before']:.2f} s, "
                f"last SessionFinished to the trial's end {tune['after']:.2f} s"
            )
    results["load_after"] = os.getloadavg()
    print(
        "load average before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f}".format(
            *results["load_before"], *results["load_after"]
        )
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
