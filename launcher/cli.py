"""The command line: `run.py COMMAND ...` with argparse subcommands; with no command, `run.py` trains.

Each command imports its module only when it is the one chosen, so an actor process or a monitor never
loads the libraries of another (the model's torch above all), and `run.py --help` loads none. Exit
status: 0 success, 2 bad usage, config or data (one line, never a traceback), 1 runtime failure,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.usage import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ROOT, Parser, UsageError

AddArguments = Callable[[argparse.ArgumentParser], None]
"""Adds a command's options to its subparser."""
Run = Callable[[argparse.Namespace], int]
"""Runs a command with its parsed options and returns the exit status."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its line in `run.py --help`, its examples, and its module, loaded when chosen."""

    summary: str
    """What it does, in one line."""
    examples: str
    """Command lines shown at the end of its --help."""
    load: Callable[[], tuple[AddArguments, Run]]
    """Import the command's module and return its options and its work."""


def _train() -> tuple[AddArguments, Run]:
    from launcher import train

    return train.add_arguments, train.train


def _monitor() -> tuple[AddArguments, Run]:
    from launcher import monitor

    return monitor.add_arguments, monitor.monitor_main


def _predict() -> tuple[AddArguments, Run]:
    from launcher import predict

    return predict.add_arguments, predict.predict_main


def _tune() -> tuple[AddArguments, Run]:
    from launcher import tune

    return tune.add_arguments, tune.tune_main


def _seeds() -> tuple[AddArguments, Run]:
    from launcher import seeds

    return seeds.add_arguments, seeds.seeds_main


def _generate() -> tuple[AddArguments, Run]:
    from services.data import synthetic

    return synthetic.add_arguments, synthetic.generate


def _audit() -> tuple[AddArguments, Run]:
    from launcher import audit

    return audit.add_arguments, audit.audit_main


def _keys() -> tuple[AddArguments, Run]:
    return _keys_arguments, _create_keys


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py keys`."""
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "keys", help="keys folder (default: keys/ beside run.py)"
    )
    parser.add_argument("--clients", type=int, default=1, help="client folders to add (default: 1)")


def _create_keys(args: argparse.Namespace) -> int:
    """Create CURVE keys for the session and its monitors."""
    from services.transport.curve import ALLOWLIST_DIR, LOCAL_KIT, SERVER_DIR, create_keys

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


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train one model with the actor system (the default)",
        """examples:
  run.py                                        the default session (configs/default.yaml)
  run.py --set model.algorithm=a2c --set training.steps_per_episode=1e5
  run.py --data my-bars.csv --name first        your own bars; the run folder is runs/first/
  run.py --config my.yaml --set env.n_envs=8    your config file, one key changed
  run.py --resume runs/first --set training.episodes=2
  run.py train --set training.episodes=3        the same as without `train`""",
        _train,
    ),
    "monitor": Command(
        "attach to a running session: state, then live events",
        """examples:
  run.py monitor --run runs/NAME                a session on this host (the line it printed)
  run.py monitor --run runs/NAME --once --json  the current state as one JSON object
  run.py monitor --connect tcp://HOST:PORT --keys keys/client-1   from another host (run.py keys)""",
        _monitor,
    ),
    "predict": Command(
        "print a trained model's position after the last bar",
        """examples:
  run.py predict --run runs/NAME                on the run's own data
  run.py predict --run runs/NAME --data new-bars.csv --json""",
        _predict,
    ),
    "audit": Command(
        "check features, observations and fills for look-ahead (the bars after random cuts change)",
        """examples:
  run.py audit                                  the default config
  run.py audit --config my.yaml --cuts 20       your config, with its custom features
  run.py audit --set 'data.features.custom=[mypkg.features:momentum]'""",
        _audit,
    ),
    "tune": Command(
        "search hyperparameters: an Optuna study of whole sessions over seeds",
        """examples:
  run.py tune --space configs/tune.yaml --trials 20 --study first     SQLite in runs/first/study.db
  run.py tune --space configs/tune.yaml --trials 20 --study first     again: the study resumes
  run.py tune --space configs/tune.yaml --trials 50 --study shared --seed 1 \\
      --storage postgresql://user:password@db-host/optuna            one of several hosts""",
        _tune,
    ),
    "seeds": Command(
        "train one configuration over several seeds, with bootstrap intervals",
        """examples:
  run.py seeds --seeds 5 --name five                                runs/five/seed-0 .. seed-4
  run.py seeds --config my.yaml --seeds 3 --set training.steps_per_episode=1e5""",
        _seeds,
    ),
    "keys": Command(
        "create CURVE keys for monitors on other hosts",
        """examples:
  run.py keys                                   keys/ with one client folder
  run.py keys --clients 3 --dir /srv/keys       three client folders in /srv/keys""",
        _keys,
    ),
    "generate-data": Command(
        "write a synthetic OHLCV CSV of any length (seeded)",
        """examples:
  run.py generate-data --rows 5000 --seed 1 --out data/synthetic.csv
  run.py generate-data --rows 1000000 --freq 1min --out /tmp/minutes.csv.gz""",
        _generate,
    ),
}
"""The commands of `run.py`, in the order --help lists them."""
DEFAULT_COMMAND = "train"
"""The command of a command line that starts with an option or is empty."""


def _formatter(prog: str) -> argparse.HelpFormatter:
    """Lay out help with room for the longest command name and examples as written."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=24)


def parser(chosen: str | None = None) -> Parser:
    """Return the parser of `run.py`; only the chosen command's module is imported for its options."""
    top = Parser(
        prog="run.py",
        formatter_class=_formatter,
        description="Train one stable-baselines3 trading model with an actor system; attach monitors;\n"
        "use the model. With no command, run.py trains: `run.py --set KEY=VALUE` is\n"
        "`run.py train --set KEY=VALUE`.",
        epilog="`run.py COMMAND --help` shows a command's options and examples.",
    )
    commands = top.add_subparsers(title="commands", dest="command", metavar="COMMAND", parser_class=Parser)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.summary,
            description=command.summary[0].upper() + command.summary[1:] + ".",
            epilog=command.examples,
            formatter_class=_formatter,
        )
        if name == chosen:
            add_arguments, run = command.load()
            add_arguments(sub)
            sub.set_defaults(run=run)
    return top


def _with_command(args: list[str]) -> list[str]:
    """Return the command line with its command first: train when it starts with an option or is empty."""
    if args and (args[0] in COMMANDS or args[0] in ("-h", "--help")):
        return args
    if not args or args[0].startswith("-"):
        return [DEFAULT_COMMAND, *args]
    raise UsageError(f"run.py: unknown command {args[0]!r} (choose from {', '.join(COMMANDS)})")


def _actor(argv: Sequence[str]) -> int:
    """Host one actor process (internal: the session starts these, so --help does not list it)."""
    from launcher.actor_host import actor_main

    return actor_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the command line; bad usage exits 2 with one line, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["_actor"]:
            return _actor(args[1:])
        args = _with_command(args)
        # The subparser leaves what it does not know to the top parser, which would blame `run.py`.
        options, unknown = parser(args[0]).parse_known_args(args)
        if unknown:
            raise UsageError(f"run.py {args[0]}: unrecognized arguments: {' '.join(unknown)}")
        run: Run = options.run
        return run(options)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
