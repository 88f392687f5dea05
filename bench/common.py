"""What the benchmarks share: the machine's description and the default session's training data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from messages import DataLoaded, Message, Stop, Stopped
from messages.envelope import SessionKey
from services.config import Config
from services.data.dataset import DatasetService, SplitArrays
from services.data.fingerprint import cache_key
from services.transport.sockets import Server

BENCH_KEY = SessionKey(bytes(range(32)))
"""The session key of the benchmarks' processes (they form a session of their own)."""

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """Describe this machine: CPU count and model."""
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    return f"{os.cpu_count()} CPUs, {cpu}"


def bench_model(config: Config, env: Any) -> Any:
    """Build a TradingModel on env by the project's one factory, as the benchmarks train it.

    The config's model options, seed and budget; no tensorboard, values dropped, env its own eval env.
    """
    from services.model.trading_model import TradingModel  # imports torch: only the training benches

    return TradingModel.create(
        config.model,
        env,
        eval_env=env,
        seed=config.training.seed,
        budget=config.training.episodes * config.training.steps_per_episode,
        tensorboard_dir=None,
        on_values=lambda steps, values: None,
    )


def cpu_ticks() -> tuple[int, int]:
    """Return the machine's CPU time so far and the part the host stole from it, in clock ticks.

    A virtual machine's `steal` (the eighth value of /proc/stat's cpu line) is time its cores were ready
    to run and the host ran something else: a run that had much of it ran on a slower machine.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(value) for value in fields[:8]]
    except (OSError, ValueError):
        return 0, 0
    return sum(ticks), ticks[7] if len(ticks) > 7 else 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Return the share of the CPU time between two cpu_ticks() readings that the host stole."""
    total = after[0] - before[0]
    return (after[1] - before[1]) / total if total > 0 else 0.0


def whole_split(split: Any) -> SplitArrays:
    """Return every row of an episode split as arrays (a split may be arrays or a reader of blocks)."""
    return split.block(0, len(split)) if hasattr(split, "block") else split


def train_data(config: Config) -> tuple[DataLoaded, SplitArrays]:
    """Load the config's data as the data actor does and return its summary and episode 1's train split."""
    service = DatasetService(
        config.data,
        data_hash=cache_key(config.data.source, config.data.features),
        window=config.env.window,
        episode_length=config.env.episode_length,
        cache_root=ROOT,
    )
    summary = service.load()
    return summary, whole_split(service.episode(1).train)


def serve_until_stopped(
    server: Server, answer: Callable[[Message], Message], parent: int | None = None
) -> None:
    """Answer every request on a bare transport server with `answer` until a Stop comes, then close it.

    It also stops when the process that started it (`parent`, by default this process's parent now) is
    gone: a benchmark killed mid-run leaves no server polling beside the next one's measurements.
    """
    parent = os.getppid() if parent is None else parent
    try:
        while os.getppid() == parent:
            for item in server.poll(50):
                msg = item.message
                if msg is None:
                    raise RuntimeError(f"{server.endpoint}: bad request: {item.error}")
                if isinstance(msg, Stop):
                    server.reply(item.peer, Stopped(correlation_id=msg.msg_id))
                    return
                server.reply(item.peer, answer(msg))
    finally:
        server.close()


def parse_seeds(text: str) -> list[int]:
    """Return the seeds of a list such as "0-4,7" (ranges inclusive), in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise SystemExit(f"--seeds: {part!r} is not a seed or a range such as 0-4") from None
        if not span:
            raise SystemExit(f"--seeds: {part!r} is an empty range")
        seeds.extend(seed for seed in span if seed not in seeds)
    return seeds
