"""The project's error types for unusable input: each message names the file, record or option at fault.

The command line turns them into one line on stderr and exit status 2 (:mod:`diffdet.cli`); anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """An input (image, folder, annotation file, weights) that cannot be used; the message names it."""


class BadImageError(RuntimeError):
    """An image that cannot be used: missing, undecodable, or not the size its JSON entry states."""


class BadAnnotationError(ValueError):
    """An instances JSON that is not valid COCO detection format."""
