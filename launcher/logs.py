"""Configure logging: one line per record on the console, full records and tracebacks in a log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

QUIET_LIBRARIES = ("matplotlib", "PIL", "h5py")


class OneLineFormatter(logging.Formatter):
    """Format one line per record for the console; tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the message, with the exception's type and text on the same line."""
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line = f"{line}: {type(exc).__name__}: {exc}"
        return self._fmt % {"levelname": record.levelname, "message": line} if self._fmt else line


def configure_logging(log_file: Path | None, *, stderr_level: int, prefix: str = "") -> None:
    """Send records at stderr_level and above to stderr, and every INFO record to log_file."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level)
    console.setFormatter(OneLineFormatter(f"{prefix}%(levelname)s %(message)s"))
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
        root.addHandler(file_handler)
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING)
