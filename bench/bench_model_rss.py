"""Check that the model actor's memory stays flat across episodes: its RSS after episode 10 vs episode 1.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_model_rss.py [--quick] [--episodes 10] [--steps 32768]

It runs `python run.py --set training.episodes=E --set training.steps_per_episode=N` (default config
otherwise, heartbeats every --heartbeat-s) into a temporary runs folder, then reads the model actor's
Heartbeat events from the run's events.jsonl. The RSS "after episode k" is the last model heartbeat
published before the model's EpisodeFinished event of episode k (the hub numbers events in arrival
order and one actor's events arrive in the order it sent them). The per-episode peak is printed too,
and the env actor's RSS the same way.

Shared step buffers: while the session runs, a thread lists the run's ipc folder every 0.1 s (buffer
files, their bells and bytes) and /dev/shm; the report says how many distinct buffers the session made,
the most bytes held at once, what /dev/shm held before, at most during and after, and what the ipc folder
holds after the session (nothing, when the buffers are removed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def episode_rss(events: list[dict[str, Any]], actor: str) -> list[dict[str, Any]]:
    """Return per episode the actor's last heartbeat RSS before its end and the peak during it."""
    ends = sorted(
        (e for e in events if e.get("type") == "EpisodeFinished" and e.get("actor") == "model"),
        key=lambda e: e["seq"],
    )
    beats = sorted(
        (e for e in events if e.get("type") == "Heartbeat" and e.get("actor") == actor),
        key=lambda e: e["seq"],
    )
    rows = []
    previous_end = -1
    for end in ends:
        before = [b for b in beats if b["seq"] < end["seq"]]
        during = [b["rss_bytes"] for b in before if b["seq"] > previous_end]
        if not before:
            raise RuntimeError(f"no {actor} heartbeat before the end of episode {end['episode']}")
        rows.append(
            {
                "episode": end["episode"],
                "rss_bytes": before[-1]["rss_bytes"],
                "peak_bytes": max(during) if during else before[-1]["rss_bytes"],
                "heartbeats": len(during),
                "steps_per_s": end["steps_per_s"],
            }
        )
        previous_end = end["seq"]
    return rows


class BufferWatch:
    """Sample the session's shared step buffers and /dev/shm from a thread while the session runs."""

    def __init__(self, ipc: Path, interval_s: float = 0.1) -> None:
        self.ipc = ipc
        self.interval_s = interval_s
        self.names: set[str] = set()
        self.most_bytes = 0
        self.most_files = 0
        self.dev_shm_before = self.dev_shm()
        self.dev_shm_most = self.dev_shm_before
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def dev_shm() -> int:
        """Return how many entries /dev/shm holds (0 where there is none)."""
        folder = Path("/dev/shm")
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def buffers(self) -> list[Path]:
        """Return the buffer files and bells in the ipc folder now."""
        try:
            return [p for p in self.ipc.iterdir() if ".shm" in p.name]
        except FileNotFoundError:
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            files = self.buffers()
            size = 0
            for path in files:
                try:
                    size += path.stat().st_size
                except FileNotFoundError:
                    continue
                if path.name.endswith(".shm"):
                    self.names.add(path.name)
            self.most_bytes = max(self.most_bytes, size)
            self.most_files = max(self.most_files, len(files))
            self.dev_shm_most = max(self.dev_shm_most, self.dev_shm())
            self.samples += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    """Run the session, read its events and print the RSS per episode and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass (small budget)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=32_768, help="training steps per episode")
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--keep", type=Path, help="write the run folder here instead of a temporary one")
    args = parser.parse_args()
    if args.quick:
        args.steps = 4096

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as scratch:
        runs_dir = (args.keep or Path(scratch)).resolve()
        name = f"rss-{time.strftime('%Y%m%d-%H%M%S')}"
        command = [
            sys.executable,
            "run.py",
            "--name",
            name,
            "--set",
            f"session.runs_dir={runs_dir}",
            "--set",
            f"training.episodes={args.episodes}",
            "--set",
            f"training.steps_per_episode={args.steps}",
            "--set",
            f"session.heartbeat_s={args.heartbeat_s}",
        ]
        print("command:", " ".join(command[1:]), flush=True)
        watch = BufferWatch(runs_dir / name / "ipc")
        watch.start()
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        watch.stop()
        left = watch.buffers()
        if completed.returncode != 0:
            print(completed.stdout[-2000:], completed.stderr[-2000:], file=sys.stderr)
            return 1
        lines = (runs_dir / name / "events.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]

    rows = episode_rss(events, "model")
    env_rows = episode_rss(events, "env")
    print(f"session: {args.episodes} episodes x {args.steps:,} steps in {wall:.1f} s wall")
    print("episode  model RSS MiB  (peak in episode, heartbeats)  env RSS MiB  steps/s")
    for row, env_row in zip(rows, env_rows, strict=True):
        model_mib, peak_mib, env_mib = (
            r / 2**20 for r in (row["rss_bytes"], row["peak_bytes"], env_row["rss_bytes"])
        )
        print(
            f"{row['episode']:>7}  {model_mib:13.1f}  ({peak_mib:7.1f}, {row['heartbeats']:>3})"
            f"            {env_mib:11.1f}  {row['steps_per_s']:,.0f}"
        )
    first, last = rows[0]["rss_bytes"], rows[-1]["rss_bytes"]
    ratio = last / first
    print(
        f"model actor RSS after episode 1: {first / 2**20:.1f} MiB; after episode {rows[-1]['episode']}: "
        f"{last / 2**20:.1f} MiB; ratio {ratio:.3f} (target within 5%: "
        f"{'met' if abs(ratio - 1) <= 0.05 else 'NOT met'})"
    )
    env_first, env_last = env_rows[0]["rss_bytes"], env_rows[-1]["rss_bytes"]
    print(
        f"env actor RSS after episode 1: {env_first / 2**20:.1f} MiB; after episode "
        f"{env_rows[-1]['episode']}: {env_last / 2**20:.1f} MiB; ratio {env_last / env_first:.3f}"
    )
    print(
        f"shared step buffers: {len(watch.names)} made in the session ({', '.join(sorted(watch.names))}); "
        f"at most {watch.most_files} files, {watch.most_bytes / 2**10:.1f} KiB at once "
        f"({watch.samples} samples); left in the ipc folder after the session: {len(left)}"
    )
    print(
        f"/dev/shm entries: {watch.dev_shm_before} before, at most {watch.dev_shm_most} during, "
        f"{BufferWatch.dev_shm()} after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
