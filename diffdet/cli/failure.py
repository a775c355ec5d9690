"""The command line's error rule, in one place, for ``diffdet COMMAND`` and ``python -m diffdet.train``.

Unusable input (:class:`~diffdet.errors.InputError` and its subclasses, a wrong option, a missing
optional package) ends the command with one line on stderr, ``PROG: error: MESSAGE``, and exit status
2; a failed peer of a distributed run (``DistributedError``) with one line and exit status 1. Any other
exception is a bug: it keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from diffdet.errors import DistributedError, InputError, cut
from diffdet.optional import MissingDependencyError

USAGE_ERROR = 2
PEER_FAILURE = 1
"""Exit status when another process of a distributed run failed (:class:`DistributedError`)."""
MESSAGE_CHARS = 400
"""Longest message printed; readers cut the values they quote, this is the last guard."""


class OptionError(InputError):
    """A command-line option argparse refused (unknown, missing, or not of its type).

    Attributes:
        prog: the (sub)command whose parser refused it, e.g. ``diffdet eval``.
    """

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`OptionError` (printed as one line by
    :func:`run_command`) instead of printing the usage and exiting; subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise OptionError(f"{message} (see {self.prog} --help)", self.prog)


def one_line(message: str) -> str:
    """``message`` on one line and at most :data:`MESSAGE_CHARS` long.

    An error raised in a DataLoader worker comes back as "Caught X in DataLoader worker process 0."
    plus the worker's traceback; its last line holds the original message, which is kept.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "worker" in lines[0]:
        lines = [lines[-1].split(": ", 1)[-1]]
    return cut(" ".join(lines), MESSAGE_CHARS)


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``; on unusable input print ``PROG: error: MESSAGE`` to stderr and return 2 (1 for
    a failed peer of a distributed run).

    Args:
        prog: the command's name for the message (an :class:`OptionError` names its own parser).
        command: the command's body; returns its exit status.

    Returns:
        int: the command's exit status, :data:`USAGE_ERROR` or :data:`PEER_FAILURE`.
    """
    try:
        return command()
    except (InputError, MissingDependencyError) as err:
        print(f"{getattr(err, 'prog', prog)}: error: {one_line(str(err))}", file=sys.stderr)
        return USAGE_ERROR
    except DistributedError as err:  # a peer died or never came: not the user's input, nor a bug here
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return PEER_FAILURE
