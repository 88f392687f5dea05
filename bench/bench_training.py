"""Measure PPO training steps/s with the env behind the actor system, in process, and with a null env.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_training.py [--quick] [--steps 65536] [--repeats 5] [--skip-session]

Part 1 trains five models built by the project's one factory (`TradingModel.create`, the default
config's PPO hyperparameters, torch threads and n_envs) on the default session's train split of
data/STOCKS_GOOGL.csv, each for --steps per repeat, the five interleaved in a rotating order (with
--rotate N, each repeat's setups other than (s) take turns of N steps, A B C A B C ..., so that the
machine's slow spells, which last seconds here, fall on all of them alike; but the env actor of (a) and
(af) then sleeps through the other setups' turns, so each of their turns starts with a new lease and a
wake-up, which a session never pays):
  (a) actor: the real env actor process (`run.py _actor env` with the real VecEnvFactory), fed the
      train split over its ZeroMQ ROUTER, stepped from SB3 in this process through RemoteVecEnv; its
      ipc endpoint makes the steps go through shared buffers, only a step token travels;
  (af) frames: the same env actor with the step arrays as ZeroMQ frames (the tcp path), for comparison;
  (a2) server: the same envs served by a bare `services.transport.sockets.Server` loop in a child process, no
      actor (no pykka, no heartbeats), so (a)/(a2) is the cost of the actor framework;
  (a') local: the same VecTradingEnv (VecEnvFactory) in this process behind the same RemoteVecEnv
      (LocalBackend), so (a)/(a') is the cost of the process boundary alone;
  (b) dummy: SB3's DummyVecEnv over n_envs single TradingEnvs (each in SB3's Monitor) in this process;
  (c) null: a VecEnv that returns zeros, so the figure is the learner's own bound;
  (s) session: the whole system, `python run.py` with the same config and --session-factor times the
      steps (model actor training in pieces, hub, monitor, heartbeats and events all running); its
      training steps/s from its EpisodeFinished event (model creation and start-up excluded).
Without --rotate, each repeat runs (s) between two runs of (b), and a repeat's (b) is the two together
(steps over time): (s) is compared with the machine of its own moment, not of a run ten seconds away.
Part 2 times the whole default session (`python run.py`, 500,000 steps) and, in the compare venv,
SB3 PPO with its defaults on gym-anytrading's stocks-v0 (bench/bench_anytrading_ppo.py) for
--baseline-steps, extrapolated to the same 500,000 steps; the two alternate over --session-repeats.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import BENCH_KEY, bench_model, cpu_ticks, machine, steal_share, train_data  # noqa: E402
from training_setups import EnvActorProcess, TimedBackend, dummy_vec_env, null_vec_env, serve_plain  # noqa: E402

from messages import Stop  # noqa: E402
from services.config import Config, load_config  # noqa: E402
from services.transport.sockets import Client  # noqa: E402

COMPARE_PYTHON = ROOT / "bench" / ".venv-compare" / "bin" / "python"
SETUPS = ("actor", "frames", "server", "local", "dummy", "null", "session")


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Return the median of the same-repeat ratios a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def repeat_order(chosen: Sequence[str], repeat: int) -> list[str]:
    """Return the runs of one repeat: the setups rotated by the repeat's number, and (s) between two
    runs of (b) when both are chosen.

    A session is one run of 10 to 20 s in a fresh set of processes, the others 3 to 5 s each; with (b)
    just before and just after it, the (b) that (s) is divided by ran on the machine of the same moment
    (the two taken together: an ABA pair), whatever the machine's drift over the repeat. The pair moves
    through the rotation as one unit.
    """
    sandwich = "session" in chosen and "dummy" in chosen
    units: list[list[str]] = [[name] for name in chosen if not (sandwich and name in ("session", "dummy"))]
    if sandwich:
        units.append(["dummy", "session", "dummy"])
    shift = repeat % len(units)
    return [name for unit in units[shift:] + units[:shift] for name in unit]


def pooled_rate(rates: Sequence[float]) -> float:
    """Return the rate of equal-length runs taken together (their harmonic mean: total steps over total
    time)."""
    return len(rates) / sum(1.0 / rate for rate in rates)


def bench_setups(
    config: Config,
    overrides: list[str],
    steps: int,
    repeats: int,
    session_factor: int,
    setups: Sequence[str] = SETUPS,
    rotate: int = 0,
) -> dict[str, Any]:
    """Train the setups interleaved; print and return steps/s and ratios.

    Args:
        rotate: when > 0, the setups other than (s) take turns of this many steps within each repeat
            instead of training their whole run one after the other.
    """
    from services.env.factory import VecEnvFactory
    from services.model.remote_vec_env import LocalBackend, RemoteBackend, RemoteVecEnv

    summary, train = train_data(config)
    n_features = train.features.shape[1]
    obs_size = config.env.window * n_features + 2
    print(
        f"train split: {len(train)} bars x {n_features} features; n_envs {config.env.n_envs}, "
        f"hyperparameters {config.model.hyperparams}, net_arch {list(config.model.net_arch)}, "
        f"torch threads {config.model.torch_threads}, device {config.model.device}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-training-") as folder:
        actor = EnvActorProcess(config, Path(folder))
        plain_endpoint = f"ipc://{folder}/ipc/plain.sock"
        max_bytes = config.session.max_message_bytes
        plain = multiprocessing.get_context("spawn").Process(
            target=serve_plain, args=(plain_endpoint, overrides, max_bytes)
        )
        plain.start()
        plain_client = Client(
            plain_endpoint, max_bytes=max_bytes, timeout_s=120.0, sender="model", key=BENCH_KEY
        )
        try:
            actor.install("train", train, summary.bars_per_year, config.data.block_rows)
            factory = VecEnvFactory(config.env, seed=config.training.seed)
            local = factory.create("train", summary.bars_per_year)
            local.update_data(train.features, train.open, train.close)
            local_backend = LocalBackend(
                local,
                action=factory.action,
                n_actions=factory.n_actions,
                max_leverage=factory.max_leverage,
                role="train",
            )
            timed = {
                "actor": TimedBackend(RemoteBackend(actor.client("model"), "train")),
                "frames": TimedBackend(RemoteBackend(actor.client("model"), "train", shared=False)),
                "server": TimedBackend(RemoteBackend(plain_client, "train", shared=False)),
                "local": TimedBackend(local_backend),
            }
            envs = {
                **{name: RemoteVecEnv(backend) for name, backend in timed.items()},
                "dummy": dummy_vec_env(config, train, summary.bars_per_year),
                "null": null_vec_env(config.env.n_envs, obs_size, 3),
            }
            envs = {name: env for name, env in envs.items() if name in setups}
            timed = {name: backend for name, backend in timed.items() if name in setups}
            models = {name: bench_model(config, env) for name, env in envs.items()}
            piece = config.training.piece_steps

            step_share: dict[str, list[float]] = {name: [] for name in timed}
            step_us: dict[str, list[float]] = {name: [] for name in timed}
            step_p90_us: dict[str, list[float]] = {name: [] for name in timed}
            # The shared path's steps: how many went by token, and how many waits of the model slept.
            counted = ("tokens", "sleeps", "rollouts", "colocated", "split")
            lease: dict[str, Any] = {"calls": 0, **dict.fromkeys(counted, 0)}
            lease["colocated_by_run"] = []  # per timed run of (a): rollouts on one core
            lease["split_by_run"] = []  # and split ones

            def lease_counts() -> tuple[int, ...]:
                """Return (a)'s steps by token, sleeps of the model's wait, rollouts, and the rollouts on
                one core and split."""
                backend = timed["actor"]._backend if "actor" in timed else None
                buffer = getattr(backend, "_buffer", None)
                if backend is None or buffer is None:
                    return (backend.tokens if backend is not None else 0), 0, 0, 0, 0
                return (
                    backend.tokens,
                    buffer._model_bell.sleeps,
                    buffer.rollouts,
                    buffer.colocated_rollouts,
                    buffer.split_rollouts,
                )

            def count_lease(before: tuple[int, ...], calls: int) -> None:
                after = lease_counts()
                lease["calls"] += calls
                for key, first, last in zip(counted, before, after, strict=True):
                    lease[key] += last - first
                lease["colocated_by_run"].append(after[3] - before[3])
                lease["split_by_run"].append(after[4] - before[4])

            def train_once(name: str) -> float:
                model = models[name]
                backend = timed.get(name)
                if backend is not None:
                    backend.durations.clear()
                before = lease_counts()
                started = time.perf_counter()
                done = 0
                while done < steps:
                    done += model.learn(min(piece, steps - done), lambda n: True)
                seconds = time.perf_counter() - started
                if backend is not None:
                    step_share[name].append(sum(backend.durations) / seconds)
                    step_us[name].append(statistics.median(backend.durations) * 1e6)
                    step_p90_us[name].append(statistics.quantiles(backend.durations, n=10)[-1] * 1e6)
                if name == "actor":
                    count_lease(before, len(backend.durations) if backend is not None else 0)
                return done / seconds

            def train_rotated(names: Sequence[str], rotate: int) -> dict[str, float]:
                """Train every named setup `steps` steps in turns of `rotate` steps (A, B, C, A, B, C, ...),
                so a slow spell of the machine falls on all of them alike; return their steps/s."""
                seconds = dict.fromkeys(names, 0.0)
                done = dict.fromkeys(names, 0)
                before = lease_counts()
                for name in names:
                    if name in timed:
                        timed[name].durations.clear()
                while any(done[name] < steps for name in names):
                    for name in names:
                        if done[name] >= steps:
                            continue
                        started = time.perf_counter()
                        done[name] += models[name].learn(min(rotate, steps - done[name]), lambda n: True)
                        seconds[name] += time.perf_counter() - started
                for name in names:
                    backend = timed.get(name)
                    if backend is not None:
                        step_share[name].append(sum(backend.durations) / seconds[name])
                        step_us[name].append(statistics.median(backend.durations) * 1e6)
                        step_p90_us[name].append(statistics.quantiles(backend.durations, n=10)[-1] * 1e6)
                if "actor" in names:
                    count_lease(before, len(timed["actor"].durations))
                return {name: done[name] / seconds[name] for name in names}

            def session_once(repeat: int) -> float:
                result = run_session(
                    steps * session_factor, Path(folder), f"setup-session-{repeat}", overrides
                )
                return float(result["steps_per_s"])

            for name in models:  # warm-up: first rollout, first update, allocator
                models[name].learn(models[name].rollout_steps, lambda n: True)
            chosen = tuple(name for name in SETUPS if name in setups)
            rates: dict[str, list[float]] = {name: [] for name in chosen}
            steals: list[float] = []
            dummy_runs: list[list[float]] = []  # each repeat's runs of (b), two around (s) when both run
            for repeat in range(repeats):
                ticks = cpu_ticks()
                if rotate:
                    shift = repeat % len(chosen)
                    order = chosen[shift:] + chosen[:shift]
                    trained = train_rotated([name for name in order if name != "session"], rotate)
                    for name, rate in trained.items():
                        rates[name].append(rate)
                    if "session" in chosen:
                        rates["session"].append(session_once(repeat))
                    runs = {name: [rates[name][-1]] for name in chosen}
                else:
                    runs = {name: [] for name in chosen}
                    for name in repeat_order(chosen, repeat):
                        runs[name].append(session_once(repeat) if name == "session" else train_once(name))
                    for name in chosen:
                        rates[name].append(pooled_rate(runs[name]))
                if "dummy" in runs:
                    dummy_runs.append(runs["dummy"])
                steals.append(steal_share(ticks, cpu_ticks()))
                print(
                    f"  repeat {repeat + 1}: "
                    + ", ".join(f"{name} {' and '.join(f'{r:,.0f}' for r in runs[name])}" for name in chosen)
                    + f" steps/s; the host stole {steals[-1]:.1%} of the CPU time",
                    flush=True,
                )
            for env in envs.values():
                env.close()
        finally:
            actor.stop()
            plain_client.request(Stop(reason="benchmark finished"), timeout_s=10.0)
            plain_client.close()
            plain.join(timeout=20)
    labels = {
        "actor": "(a) env actor, shared buffers (lease)",
        "frames": "(af) env actor, arrays as ZeroMQ frames",
        "server": "(a2) bare Server loop + env, no actor",
        "local": "(a') VecTradingEnv in process, RemoteVecEnv",
        "dummy": "(b) DummyVecEnv of TradingEnv, in process",
        "null": "(c) null VecEnv (learner bound)",
        "session": "(s) whole system, python run.py",
    }
    turns = f", in turns of {rotate:,} steps" if rotate else ""
    print(f"PPO training steps/s, {steps:,} steps a run{turns}, {repeats} interleaved repeats")
    for name in chosen:
        values = rates[name]
        print(
            f"  {labels[name]:44s} median {statistics.median(values):>9,.0f}  "
            f"(min {min(values):,.0f}, max {max(values):,.0f})"
        )
    for name in step_us:
        request_us, share = statistics.median(step_us[name]), statistics.median(step_share[name])
        p90 = statistics.median(step_p90_us[name])
        print(
            f"  {labels[name]:44s} step request: median {request_us:6.0f} us (p90 {p90:,.0f}), "
            f"{share:.0%} of the time"
        )
    if lease["calls"]:
        print(
            f"  (a) shared steps: {lease['calls']:,} in the timed runs, {lease['tokens']:,} by token, the "
            f"rest within leases; the model's wait slept on its bell in {lease['sleeps']:,}; "
            f"of {lease['rollouts']:,} rollouts {lease['split']:,} split (other processes kept the "
            f"other cores busy, the cheaper lately) and {lease['colocated']:,} on one core (every core "
            f"busy, or the cheaper lately)"
        )
    ratios = {
        "actor_over_local": ("actor", "local", "(a)/(a'): the cost of the process boundary"),
        "frames_over_local": ("frames", "local", "(af)/(a'): the same with array frames"),
        "server_over_local": ("server", "local", "(a2)/(a'): without the actor framework"),
        "actor_over_dummy": ("actor", "dummy", "(a)/(b)"),
        "session_over_dummy": (
            "session",
            "dummy",
            "(s)/(b): the whole system against DummyVecEnv"
            + ("" if rotate else " run just before and after it"),
        ),
        "actor_over_null": ("actor", "null", "(a)/(c)"),
    }
    figures: dict[str, Any] = {
        "rates": rates,
        "step_us": step_us,
        "step_p90_us": step_p90_us,
        "lease": lease,
        "steal": steals,
        "dummy_runs": dummy_runs,
    }
    for key, (a, b, text) in ratios.items():
        if a in rates and b in rates:
            figures[key] = median_ratio(rates[a], rates[b])
            print(f"  {text}: median same-repeat ratio {figures[key]:.2f}")
    return figures


def run_session(
    steps: int | None, runs_dir: Path, name: str, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Run `python run.py` (the default session, or with steps_per_episode=steps); return its timings."""
    command = [sys.executable, "run.py", "--name", name, "--set", f"session.runs_dir={runs_dir}"]
    for override in overrides:
        command += ["--set", override]
    if steps is not None:
        command += ["--set", f"training.steps_per_episode={steps}"]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"run.py exited {completed.returncode}: {completed.stderr[-2000:]}")
    finished = [
        event
        for event in map(json.loads, (runs_dir / name / "events.jsonl").read_text().splitlines())
        if event.get("type") == "EpisodeFinished"
    ]
    return {
        "wall_s": wall,
        "steps": sum(e["steps"] for e in finished),
        "train_s": sum(e["seconds"] for e in finished),
        "steps_per_s": sum(e["steps"] for e in finished) / sum(e["seconds"] for e in finished),
    }


def run_baseline(steps: int, total: int, torch_threads: int) -> dict[str, Any]:
    """Run the gym-anytrading PPO baseline in the compare venv; return its JSON result."""
    if not COMPARE_PYTHON.exists():
        raise RuntimeError(f"{COMPARE_PYTHON} is missing: run `bash bench/setup_compare_env.sh` first")
    command = [
        str(COMPARE_PYTHON),
        str(ROOT / "bench" / "bench_anytrading_ppo.py"),
        "--steps",
        str(steps),
        "--total",
        str(total),
        "--torch-threads",
        str(torch_threads),
    ]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"baseline exited {completed.returncode}: {completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


def bench_session(
    session_steps: int | None, baseline_steps: int, repeats: int, torch_threads: int
) -> dict[str, Any]:
    """Alternate the default session and the gym-anytrading baseline; print and return the figures."""
    sessions: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    session_total = session_steps or 500_000
    with tempfile.TemporaryDirectory(prefix="bench-session-") as folder:
        for repeat in range(repeats):
            for job in ("session", "baseline") if repeat % 2 == 0 else ("baseline", "session"):
                if job == "session":
                    sessions.append(run_session(session_steps, Path(folder), f"bench-{repeat}"))
                else:
                    baselines.append(run_baseline(baseline_steps, session_total, torch_threads))
            s, b = sessions[-1], baselines[-1]
            print(
                f"  repeat {repeat + 1}: run.py wall {s['wall_s']:.1f} s ({s['steps']:,} steps at "
                f"{s['steps_per_s']:,.0f} steps/s); gym-anytrading PPO {b['steps']:,} steps at "
                f"{b['steps_per_s']:,.0f} steps/s -> {b['total']:,} steps in {b['total_wall_s']:.0f} s"
                f"{' (extrapolated)' if b['extrapolated'] else ''}",
                flush=True,
            )
    wall = statistics.median(s["wall_s"] for s in sessions)
    base_wall = statistics.median(b["total_wall_s"] for b in baselines)
    rate_ratio = median_ratio([s["steps_per_s"] for s in sessions], [b["steps_per_s"] for b in baselines])
    wall_ratio = median_ratio([b["total_wall_s"] for b in baselines], [s["wall_s"] for s in sessions])
    threads = baselines[-1]["torch_threads"]
    print(
        f"default session vs gym-anytrading PPO defaults ({threads} torch threads), "
        f"{repeats} alternating repeat(s)"
    )
    print(f"  python run.py wall time: median {wall:.1f} s; training {sessions[-1]['steps']:,} steps")
    note = f" (extrapolated from {baseline_steps:,} steps)" if baselines[-1]["extrapolated"] else ""
    print(f"  gym-anytrading PPO, {baselines[-1]['total']:,} steps: median {base_wall:.0f} s{note}")
    print(
        f"  wall-time ratio baseline / ours {wall_ratio:.1f}x; training steps/s ratio {rate_ratio:.1f}x "
        f"(aim 2x: {'met' if wall_ratio >= 2 else 'NOT met'})"
    )
    return {"sessions": sessions, "baselines": baselines, "wall_ratio": wall_ratio, "rate_ratio": rate_ratio}


def main() -> int:
    """Parse the arguments and run the setups and the session comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass (small budgets)")
    parser.add_argument("--steps", type=int, default=65_536, help="training steps per setup and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--session-factor", type=int, default=4, help="(s) trains this many times --steps")
    parser.add_argument("--skip-setups", action="store_true")
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help=f"comma-separated subset of {','.join(SETUPS)}"
    )
    parser.add_argument(
        "--rotate",
        type=int,
        default=0,
        metavar="STEPS",
        help="the setups other than (s) take turns of this many steps within each repeat (0: each trains "
        "its whole run in turn); turns of a rollout or two make a slow spell fall on all alike",
    )
    parser.add_argument("--skip-session", action="store_true")
    parser.add_argument("--session-repeats", type=int, default=1)
    parser.add_argument("--baseline-steps", type=int, default=65_536, help="gym-anytrading steps trained")
    parser.add_argument(
        "--baseline-torch-threads", type=int, default=0, help="0: torch's default, as the baseline's docs"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="config override for part 1 only, as run.py takes it (e.g. env.n_envs=64)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    session_steps: int | None = None
    if args.quick:
        args.steps, args.repeats, args.baseline_steps, session_steps = 8192, 1, 2048, 8192
    os.chdir(ROOT)
    print(f"machine: {machine()}")
    config = load_config(None, args.overrides)
    figures: dict[str, Any] = {}
    if not args.skip_setups:
        figures["setups"] = bench_setups(
            config,
            args.overrides,
            args.steps,
            args.repeats,
            args.session_factor,
            args.setups.split(","),
            rotate=args.rotate,
        )
    if not args.skip_session:
        figures["session"] = bench_session(
            session_steps, args.baseline_steps, args.session_repeats, args.baseline_torch_threads
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
