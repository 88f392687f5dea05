"""`run.py audit`: check a setup (features, custom ones included, observations, fills) for look-ahead."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from launcher.logs import configure_logging
from launcher.usage import EXIT_FAILURE, EXIT_OK, UsageError, add_set_argument
from services.config import ConfigError, load_config
from services.data.bars import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py audit`."""
    parser.add_argument("--config", type=Path, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--data", help="data file, folder or glob (overrides data.source.path)")
    add_set_argument(parser, "set one config key, e.g. data.features.custom=[mypkg.features:momentum]")
    parser.add_argument("--cuts", type=int, default=5, help="random cut points to test (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cuts and changed bars (default: 0)")


def audit_main(args: argparse.Namespace) -> int:
    """Print whether changing the bars after random cuts changes anything at or before them."""
    from services.data.audit import audit_source

    configure_logging(None, stderr_level=logging.ERROR)
    if args.cuts < 1:
        raise UsageError(f"run.py audit: --cuts must be at least 1, got {args.cuts}")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source.path={json.dumps(args.data)}")
    try:
        config = load_config(args.config, overrides)
        report = audit_source(config, cuts=args.cuts, seed=args.seed)
    except (ConfigError, DataError, OSError) as exc:
        raise UsageError(f"audit: {exc}") from None
    for line in report.lines():
        print(line)
    print(report.summary())
    return EXIT_FAILURE if report.leaks else EXIT_OK
