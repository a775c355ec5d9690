"""The project's error types for unusable input: each message names the file, record or option at fault.

Every reader of user input (annotation files, images, weights, configs, command-line options) raises
:class:`InputError` or a subclass. The command line turns them into one line on stderr and exit
status 2 (:mod:`diffdet.cli.failure`); anything else that escapes is a bug and keeps its traceback.
The subclasses also derive from the built-in type their callers caught before (``FileNotFoundError``,
``pickle.UnpicklingError``, ``RuntimeError``), so ``except`` clauses written for those still work.
"""

from __future__ import annotations

import pickle

SHOWN_CHARS = 60
"""Characters of a user's value quoted in a message; the rest is cut (a bad line may be megabytes)."""


class InputError(ValueError):
    """An input (image, folder, annotation file, weights, config, option) that cannot be used; the
    message names it."""


class BadImageError(InputError, RuntimeError):
    """An image that cannot be used: missing, undecodable, too small for the model, or not the size its
    JSON entry states."""


class BadAnnotationError(InputError):
    """An annotation file (COCO, LVIS, CrowdHuman odgt) that is not valid; the message names the file
    and the record (odgt: the line)."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class BadWeightsError(InputError, pickle.UnpicklingError):
    """A weights file that is not a checkpoint: empty, truncated, text, or holding more than tensors
    (refused before anything in it runs)."""


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut, so that a message stays readable."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (:func:`cut`): a user's value quoted in a message."""
    return cut(repr(value), limit)


class DistributedError(RuntimeError):
    """The process group did not form, or a peer died or did not answer within the timeout (not the
    user's input: the command line prints it as one line with exit status 1)."""
