"""The command line: `run.py` trains; `run.py COMMAND` runs one of the other commands.

Each command imports only what it needs when it runs, so an actor process or a monitor never loads the
libraries of another (the model's torch above all). Exit status: 0 success, 2 bad usage, config or
data (one line, never a traceback), 1 runtime failure, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from launcher.usage import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ROOT, Parser, UsageError


def _train(argv: Sequence[str]) -> int:
    from launcher.train import train

    return train(argv)


def _monitor(argv: Sequence[str]) -> int:
    from launcher.monitor import monitor_main

    return monitor_main(argv)


def _predict(argv: Sequence[str]) -> int:
    from launcher.predict import predict_main

    return predict_main(argv)


def _actor(argv: Sequence[str]) -> int:
    from launcher.actor_host import actor_main

    return actor_main(argv)


def _generate(argv: Sequence[str]) -> int:
    """Write a synthetic OHLCV CSV of any length."""
    from services.data import synthetic

    return int(synthetic.main(list(argv)) or 0)


def _keys(argv: Sequence[str]) -> int:
    """Create CURVE keys for the session and its monitors: `run.py keys [--dir keys] [--clients N]`."""
    from services.transport.curve import ALLOWLIST_DIR, LOCAL_KIT, SERVER_DIR, create_keys

    parser = Parser(prog="run.py keys", description="Create CURVE keys for a session and its monitors.")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "keys", help="keys folder (default: keys/ beside run.py)"
    )
    parser.add_argument("--clients", type=int, default=1, help="client folders to add (default: 1)")
    args = parser.parse_args(argv)
    if args.clients < 0:
        raise UsageError(f"run.py keys: --clients must be zero or more, got {args.clients}")
    folder = args.dir.resolve()
    try:
        created = create_keys(folder, args.clients)
    except OSError as exc:
        print(f"keys: cannot create keys in {folder}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    state = "created" if created.server_created else "kept"
    print(f"session keys {state}: {folder / SERVER_DIR}; set session.keys_dir: {folder}")
    print(f"allowlist: {folder / ALLOWLIST_DIR} (delete a client's .key file there to revoke it)")
    for kit in created.kits:
        if kit.name == LOCAL_KIT:
            print(f"local monitor keys: {kit} (used by the session's own monitor)")
        else:
            print(f"monitor keys: {kit} -> python run.py monitor --connect tcp://HOST:PORT --keys {kit}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "monitor": _monitor,
    "keys": _keys,
    "predict": _predict,
    "generate-data": _generate,
    "_actor": _actor,
}
"""The commands after `run.py`; anything else is the command line of a training session."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the command line; bad usage exits 2 with one line, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        return _train(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
