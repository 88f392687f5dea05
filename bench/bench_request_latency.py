"""Break down the round trip of one batched env step between two processes over ipc.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_request_latency.py [--quick] [--n-envs 16]

Four round trips are timed in the same run, interleaved in a rotating order over several repeats:
  raw      pyzmq DEALER -> ROUTER in a child process that answers with frames of the sizes of an
           EnvsStepped reply (no codec, no env): the floor of this machine;
  codec    the project's transport Client -> Server in a child process that answers every request
           with a prebuilt EnvsStepped (codec and transport, no env, no actor);
  actor    StepEnvs to the real env actor (`run.py _actor env`, the default config's train split):
           the array-frame path (tcp's) the model actor sees;
  shared   the same env actor through its shared step buffer (`RemoteBackend`, the ipc path): the first
           step by token, the rest within the env actor's lease;
and, in this process, one VecTradingEnv.step and one encode + decode of StepEnvs and EnvsStepped.

With --work-us W (default 100) each call is followed by W microseconds of busy work, as the learner's
forward pass follows a step in training (the env actor then waits between steps as it does there); the
round trips are timed call by call without the work, and their median and p90 printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import BENCH_KEY, serve_until_stopped, train_data  # noqa: E402
from training_setups import EnvActorProcess  # noqa: E402

from messages import EnvsStepped, Ping, StepEnvs, Stop, decode, encode  # noqa: E402
from services.config import load_config  # noqa: E402
from services.env.factory import VecEnvFactory  # noqa: E402
from services.model.remote_vec_env import RemoteBackend  # noqa: E402
from services.transport.sockets import Client, Server  # noqa: E402

MAX_BYTES = 64 << 20


def stepped_reply(n_envs: int, obs_size: int) -> EnvsStepped:
    """Return an EnvsStepped of the shapes the env actor sends for n_envs envs."""
    return EnvsStepped(
        obs=np.zeros((n_envs, obs_size), dtype=np.float32),
        reward=np.zeros(n_envs, dtype=np.float32),
        terminated=np.zeros(n_envs, dtype=bool),
        truncated=np.zeros(n_envs, dtype=bool),
        terminal_obs=np.zeros((0, obs_size), dtype=np.float32),  # no env finished, as on most steps
        episode_return=np.zeros(n_envs),
        episode_length=np.zeros(n_envs, dtype=np.int64),
    )


def serve_raw(endpoint: str, n_envs: int, obs_size: int) -> None:
    """Answer every request with the frames of an EnvsStepped, bytes only (child process)."""
    frames = [bytes(frame) for frame in encode(stepped_reply(n_envs, obs_size))]
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    while True:
        request = sock.recv_multipart(copy=False)
        if request[1].bytes == b"stop":
            sock.close()
            return
        sock.send_multipart([request[0], *frames])


def serve_codec(endpoint: str, n_envs: int, obs_size: int) -> None:
    """Answer every request with a prebuilt EnvsStepped through the transport (child process)."""
    template = stepped_reply(n_envs, obs_size)
    server = Server(endpoint, max_bytes=MAX_BYTES, name="codec-bench", key=BENCH_KEY)
    serve_until_stopped(server, lambda msg: dataclasses.replace(template, correlation_id=msg.msg_id))


def per_call_us(call: Callable[[], Any], count: int) -> float:
    """Return the mean time of one call in microseconds over `count` calls."""
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count * 1e6


def timed_calls(call: Callable[[], Any], count: int, work_us: float) -> list[float]:
    """Return the duration of each of `count` calls in microseconds, each followed by work_us of work."""
    clock = time.perf_counter
    durations = []
    for _ in range(count):
        started = clock()
        call()
        ended = clock()
        durations.append((ended - started) * 1e6)
        until = ended + work_us / 1e6
        while clock() < until:
            pass
    return durations


def main() -> int:
    """Start the three servers, time the round trips interleaved and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000, help="round trips per run")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--work-us", type=float, default=100.0, help="busy work after each call")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.calls = 2, 500
    os.chdir(ROOT)
    config = load_config(None, [f"env.n_envs={args.n_envs}"])
    summary, train = train_data(config)
    obs_size = config.env.window * train.features.shape[1] + 2
    actions = np.random.default_rng(0).integers(0, 3, size=args.n_envs)

    env = VecEnvFactory(config.env, seed=config.training.seed).create("train", summary.bars_per_year)
    env.update_data(train.features, train.open, train.close)
    env.reset()
    request = StepEnvs(role="train", actions=actions)
    reply = stepped_reply(args.n_envs, obs_size)
    in_process = {
        "VecTradingEnv.step": per_call_us(lambda: env.step(actions), 20_000),
        "encode + decode StepEnvs": per_call_us(lambda: decode(encode(request), max_bytes=MAX_BYTES), 20_000),
        "encode + decode EnvsStepped": per_call_us(
            lambda: decode(encode(reply), max_bytes=MAX_BYTES), 20_000
        ),
    }

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        raw_endpoint, codec_endpoint = f"ipc://{folder}/raw.sock", f"ipc://{folder}/codec.sock"
        children = [
            spawn.Process(target=serve_raw, args=(raw_endpoint, args.n_envs, obs_size)),
            spawn.Process(target=serve_codec, args=(codec_endpoint, args.n_envs, obs_size)),
        ]
        for child in children:
            child.start()
        actor_dir = Path(folder) / "actor"
        actor_dir.mkdir()
        actor = EnvActorProcess(config, actor_dir)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(raw_endpoint)
        request_bytes = [bytes(frame) for frame in encode(request)]
        codec = Client(codec_endpoint, max_bytes=MAX_BYTES, timeout_s=60.0, sender="bench", key=BENCH_KEY)
        codec.request(Ping(), timeout_s=120.0)
        try:
            actor.install("train", train, summary.bars_per_year, config.data.block_rows)
            steps = actor.client("model")

            def raw_trip() -> None:
                raw.send_multipart(request_bytes)
                raw.recv_multipart(copy=False)

            shared = RemoteBackend(actor.client("model"), "train")
            trips: dict[str, Callable[[], Any]] = {
                "raw": raw_trip,
                "codec": lambda: codec.request(StepEnvs(role="train", actions=actions)),
                "actor": lambda: steps.request(StepEnvs(role="train", actions=actions)),
                "shared": lambda: shared.step(actions),
            }
            for trip in trips.values():
                timed_calls(trip, 300, args.work_us)
            times: dict[str, list[float]] = {name: [] for name in trips}
            p90s: dict[str, list[float]] = {name: [] for name in trips}
            names = list(trips)
            for repeat in range(args.repeats):
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    durations = timed_calls(trips[name], args.calls, args.work_us)
                    times[name].append(statistics.median(durations))
                    p90s[name].append(statistics.quantiles(durations, n=10)[-1])
            tokens = shared.tokens
            steps.close()
        finally:
            raw.send_multipart([b"stop"])
            codec.request(Stop(), timeout_s=10.0)
            codec.close()
            raw.close()
            actor.stop()
            for child in children:
                child.join(timeout=20)

    print(
        f"n_envs {args.n_envs}, observation {obs_size} float32; {args.repeats} repeats of {args.calls} "
        f"calls, {args.work_us:.0f} us of work after each; medians of the repeats' per-call medians and p90s"
    )
    for name, value in in_process.items():
        print(f"  in process: {name:32s} {value:8.1f} us")
    labels = {
        "raw": "raw pyzmq, same bytes",
        "codec": "transport Client/Server + codec",
        "actor": "StepEnvs to the env actor",
        "shared": "shared buffer of the env actor",
    }
    for name, label in labels.items():
        values = times[name]
        print(
            f"  round trip: {label:32s} median {statistics.median(values):8.1f} us "
            f"(min {min(values):.1f}, max {max(values):.1f}; p90 {statistics.median(p90s[name]):.1f})"
        )
    total = (args.repeats * args.calls) + 300
    print(f"  shared steps by token: {tokens} of {total} (the rest within the env actor's lease)")
    codec_raw = statistics.median(c / r for c, r in zip(times["codec"], times["raw"], strict=True))
    actor_raw = statistics.median(a / r for a, r in zip(times["actor"], times["raw"], strict=True))
    shared_raw = statistics.median(a / r for a, r in zip(times["shared"], times["raw"], strict=True))
    print(
        f"  same-run ratios: codec/raw {codec_raw:.2f}, actor/raw {actor_raw:.2f}, "
        f"shared/raw {shared_raw:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
