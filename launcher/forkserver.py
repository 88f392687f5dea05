"""The fork server of a study: `python -m launcher.forkserver --socket PATH` (services/forkserver.py).

It imports what a session's launcher and its four actors import (numpy, pandas, zmq, torch,
stable-baselines3, matplotlib and the project's modules), checks that the imports started no Python
thread, and then forks a child per request that runs `run.py` (launcher.cli.main): a trial's session
launcher, and that launcher's actor processes. No ZeroMQ context exists before a fork: each child
creates its own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from launcher.usage import ROOT
from services.forkserver import FOLDER_PREFIX, ForkClient, ForkServer, ForkServerError, serve

PRELOADED = (
    "numpy",
    "pandas",
    "zmq",
    "pykka",
    "yaml",
    "psutil",
    "rich.console",
    "torch",
    "torch.utils.tensorboard",
    "stable_baselines3",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "launcher.cli",
    "launcher.train",
    "launcher.actor_host",
    "launcher.monitor",
    "actors.data",
    "actors.environment",
    "actors.model",
    "actors.monitor",
    "actors.session",
    "services.data.dataset",
    "services.data.universe",
    "services.env.factory",
    "services.model.trading_model",
    "services.model.remote_vec_env",
    "services.session.report",
    "services.session.views",
    "services.transport.shm",
)
"""Modules imported once by the server, so no child imports them again."""

logger = logging.getLogger(__name__)


def _warm_up() -> None:
    """Train a tiny PPO for two rollouts, so that the first use of torch's and SB3's code (kernels
    paged in, lazy set-up: over a second) is paid here once instead of in every model process; load the
    envs' compiled step kernels (numba) here too, so an env actor child steps at once.

    One torch thread and no logger outputs, so the warm-up starts no thread; the model actor sets its
    own thread count, seed and everything else random.
    """
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Tiny(gym.Env[np.ndarray, int]):
        def __init__(self) -> None:
            self.observation_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
            self.action_space = gym.spaces.Discrete(3)  # type: ignore[assignment]

        def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None) -> tuple:
            super().reset(seed=seed)
            return np.zeros(8, np.float32), {}

        def step(self, action: int) -> tuple:
            return np.zeros(8, np.float32), 0.0, False, False, {}

    torch.set_num_threads(1)
    model = PPO(
        "MlpPolicy",
        DummyVecEnv([Tiny, Tiny]),
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        policy_kwargs={"net_arch": [8]},
        device="cpu",
        seed=0,
    )
    model.learn(128)
    model.policy.predict(np.zeros((1, 8), np.float32), deterministic=True)

    from services.env import portfolio_kernel, vec_kernel

    vec_kernel.compile_kernels()
    portfolio_kernel.compile_kernels()


def _run(argv: list[str]) -> int:
    """Run a `run.py` command line in a forked child, with fresh randomness as a new interpreter has."""
    import numpy as np

    from launcher.cli import main

    np.random.seed()  # the legacy global generator would otherwise repeat the server's in every child
    return main(argv)


def _finish() -> None:
    """Do what an interpreter's exit does for a child: deliver queued ZeroMQ messages (within linger)."""
    import zmq

    logging.shutdown()
    context = zmq.Context._instance  # only a context this child made; the server never makes one
    if context is None or context.closed or zmq.Context._instance_pid != os.getpid():
        return
    done = threading.Event()

    def term() -> None:
        with contextlib.suppress(Exception):
            context.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    done.wait(3.0)  # a socket some thread left open must not keep the child alive


def add_fork_argument(parser: argparse.ArgumentParser) -> None:
    """Add --no-fork-server: every session and actor a fresh interpreter, as `python run.py` starts them."""
    parser.add_argument(
        "--no-fork-server",
        dest="fork_server",
        action="store_false",
        help="start each session and actor as a fresh interpreter instead of forking them from a server "
        "that imported their libraries once (slower by seconds per session)",
    )


@contextlib.contextmanager
def fork_server(args: argparse.Namespace, say: Callable[[str], None]) -> Iterator[ForkClient | None]:
    """Start the fork server of a study or a set of seeds (unless --no-fork-server) and stop it after.

    Yields its client, or None when the server is turned off or could not start (said in one line):
    then every session runs as a fresh `python run.py`.
    """
    if not args.fork_server:
        yield None
        return
    try:
        server = ForkServer.start([sys.executable, "-m", "launcher.forkserver"], cwd=ROOT)
    except ForkServerError as exc:
        say(f"note: {exc}; every session starts as a fresh interpreter")
        yield None
        return
    try:
        yield server.client
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Import the libraries, then serve fork requests on --socket until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m launcher.forkserver")
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    for name in PRELOADED:
        importlib.import_module(name)
    _warm_up()
    gc.collect()
    gc.freeze()  # what the server holds is never collected in a child, so its pages stay shared
    if threading.active_count() != 1:
        print(f"forkserver: importing started {threading.active_count() - 1} thread(s)", file=sys.stderr)
        return 1
    import pykka
    import zmq

    if zmq.Context._instance is not None or pykka.ActorRegistry.get_all():
        print("forkserver: importing made a ZeroMQ context or started an actor", file=sys.stderr)
        return 1
    logger.debug("fork server ready after %.2f s", time.monotonic() - started)
    serve(args.socket, _run, _finish)
    if args.socket.parent.name.startswith(FOLDER_PREFIX):  # a client killed with -9 leaves its folder
        with contextlib.suppress(OSError):
            args.socket.parent.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
