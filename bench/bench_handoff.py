"""What a hand-over between two processes costs on this machine, outside training, and what the learner's
forward pass costs: the floor under the shared step buffer's round trip (docs/BENCHMARKS.md, section 14).

Part 1: two processes take turns through a shared word, as the model and the env actor do at each step,
with the project's own doorbells (services.transport.doorbell): the first writes a request and waits for
the answer, the second waits for the request and answers, then the first does some work (a stand-in for
the forward pass) before the next request. Each pair of cores (both on one core, or one each) is timed
with both ways of waiting: spinning with yields (`Doorbell.wait` with a long spin) and sleeping on the
bell at once (no spin: the other side's ring wakes it). `--hog` starts a busy loop pinned to the second
process's core first, as a loaded machine has.

Part 2: SB3's PPO policy forward pass (MlpPolicy, [64, 64], one torch thread, as the default session)
on 8 to 64 observations of the default config's width, the work each step of a rollout does before the
env steps.

    .venv/bin/python bench/bench_handoff.py [--turns 5000] [--work 8000] [--hog] [--skip-forward]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.transport.doorbell import Doorbell  # noqa: E402

REQUEST, ANSWER, REQUEST_SLEEPS, ANSWER_SLEEPS = range(4)
"""The shared words: the request's and the answer's turn numbers, and each bell's sleeping flag."""


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of values by the nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hand_over(cores: tuple[int, int], spin_s: float, turns: int, work: int) -> list[float]:
    """Return the round trips (us) of `turns` request/answer turns between two processes on `cores`."""
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as folder:
        request_path, answer_path = Path(folder) / "request", Path(folder) / "answer"
        Doorbell.make(request_path)
        Doorbell.make(answer_path)
        shared = mmap.mmap(-1, mmap.PAGESIZE)
        words = memoryview(shared).cast("q")
        pid = os.fork()
        if pid == 0:  # the answering side (the env actor's role); it never returns into the caller
            code = 1
            try:
                os.sched_setaffinity(0, {cores[1]})
                bell = Doorbell(request_path, words, REQUEST_SLEEPS)
                ring = Doorbell(answer_path, words, ANSWER_SLEEPS)
                for turn in range(1, turns + 1):
                    if not bell.wait(lambda t=turn: words[REQUEST] == t, spin_s, time.perf_counter() + 10.0):
                        break  # the caller gave up: exit 1
                    words[ANSWER] = turn
                    ring.ring()
                else:
                    code = 0
            finally:
                os._exit(code)
        allowed = os.sched_getaffinity(0)
        ring = Doorbell(request_path, words, REQUEST_SLEEPS)
        bell = Doorbell(answer_path, words, ANSWER_SLEEPS)
        trips = []
        try:
            os.sched_setaffinity(0, {cores[0]})
            for turn in range(1, turns + 1):
                start = time.perf_counter_ns()
                words[REQUEST] = turn
                ring.ring()
                if not bell.wait(lambda t=turn: words[ANSWER] == t, spin_s, time.perf_counter() + 10.0):
                    raise RuntimeError(f"turn {turn} not answered within 10 s")
                trips.append((time.perf_counter_ns() - start) / 1000)
                sum(range(work))  # the learner's work between two steps
        finally:
            os.sched_setaffinity(0, allowed)
            _, status = os.waitpid(pid, 0)
            for door in (ring, bell):
                door.close()
        if status != 0:
            raise RuntimeError(f"the answering process exited with status {status}")
        return trips


def forward_pass(sizes: list[int], calls: int) -> dict[int, float]:
    """Return the median us of one SB3 PPO policy forward pass (actions, values, log-probs) per batch size."""
    import gymnasium as gym
    import numpy as np
    import torch
    from gymnasium import spaces
    from stable_baselines3 import PPO
    from stable_baselines3.common.utils import obs_as_tensor

    from services.config import load_config

    config = load_config()
    width = len(config.data.features.names) * config.env.window + 2  # features, position, unrealised PnL

    class Shape(gym.Env[np.ndarray, int]):
        observation_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)
        action_space = spaces.Discrete(3)

    torch.set_num_threads(config.model.torch_threads)
    policy = PPO(
        "MlpPolicy", Shape(), policy_kwargs={"net_arch": list(config.model.net_arch)}, device="cpu"
    ).policy
    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        obs = rng.standard_normal((size, width)).astype(np.float32)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            with torch.no_grad():
                actions, _, _ = policy(obs_as_tensor(obs, "cpu"))
            actions.cpu().numpy()
            times.append((time.perf_counter() - start) * 1e6)
        out[size] = statistics.median(times)
    return out


def main() -> int:
    """Time the hand-overs and the forward pass; print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5000, help="request/answer turns per case")
    parser.add_argument("--work", type=int, default=8000, help="loop turns of work between two requests")
    parser.add_argument("--hog", action="store_true", help="a busy loop on the second core meanwhile")
    parser.add_argument("--skip-forward", action="store_true")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        print("bench_handoff: needs two allowed cores", file=sys.stderr)
        return 2
    first, second = allowed[0], allowed[1]
    hog = None
    if args.hog:
        hog = subprocess.Popen(["taskset", "-c", str(second), sys.executable, "-c", "while 1: pass"])
        time.sleep(1.0)
    try:
        beside = f"a CPU hog on core {second}" if hog else "no hog"
        print(
            f"hand-over round trips, {args.turns} turns, {args.work} loop turns of work between ({beside}):"
        )
        for label, cores in (("one core", (first, first)), ("two cores", (first, second))):
            for way, spin_s in (("spin with yields", 1.0), ("sleep on the bell", 0.0)):
                trips = hand_over(cores, spin_s, args.turns, args.work)
                quantiles = "  ".join(
                    f"p{round(q * 100)} {percentile(trips, q):7.1f} us" for q in (0.5, 0.9, 0.99)
                )
                print(f"  {label:9s} {way:17s} {quantiles}  mean {statistics.fmean(trips):7.1f} us")
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if not args.skip_forward:
        medians = forward_pass([8, 16, 32, 64], 3000)
        print(
            "PPO policy forward pass, median: "
            + ", ".join(f"{n} obs {us:.0f} us" for n, us in medians.items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
