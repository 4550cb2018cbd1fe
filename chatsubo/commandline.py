"""What both command lines share, ``chatsubo serve`` and the bot: argument types and logging."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource

LOG_LEVELS = ("debug", "info", "warning", "error")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """An argparse type: seconds, given as ``90``, ``90s``, ``30m``, ``6h`` or ``7d``."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m or 6h")
    return seconds


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """The ``--log-level`` option, as both commands spell it."""
    parser.add_argument(
        "--log-level",
        default="info",
        choices=LOG_LEVELS,
        help="how much to log on stderr: debug is everything, error only failures",
    )


def configure_logging(level: str) -> None:
    """Log lines with a time, a level and the logger's name, to stderr."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def raise_file_limit() -> None:
    """Every socket is a file descriptor; the usual soft limit of 1024 is far too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit may still be refused as a soft one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
