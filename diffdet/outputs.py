"""Writing results without ever leaving a torn file or a mixed folder.

- :func:`write_atomic` / :func:`write_text_atomic`: a checkpoint or a results file (JSON, odgt lines)
  goes to a temporary file beside it and is renamed over the target, so a crash leaves the old file or
  the new one.
- :func:`staged_output_dir`: a command's output folder is built in a temporary folder beside it and
  swapped in at the end, so a failed run leaves the earlier run's complete output (or nothing), never
  a mix of both. A non-empty folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from diffdet.errors import InputError


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which is
    fsynced and renamed over ``path``, so a crash leaves the old file or the new one, never a torn one.

    Args:
        path: the destination; parent folders are created.
        write: writes the whole content into the binary file it is given.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def check_output_dir(out: Path, overwrite: bool, source: Path, flag: str = "--out") -> None:
    """Refuse an output folder that would overwrite the user's files.

    Args:
        out: the output folder (its files keep the input images' names).
        overwrite: whether a non-empty ``out`` may be replaced.
        source: the input: a folder (``out`` may be neither it nor inside it) or one file (``out`` may
            not be the file's folder).
        flag: the option's name for the messages.

    Raises:
        InputError: ``out`` is a file, is (or is inside) the input folder, or is a non-empty folder and
            ``overwrite`` is False.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is a file, not a folder")
    resolved, folder = out.resolve(), source.resolve()
    inside = folder in resolved.parents if source.is_dir() else False
    if source.is_file():
        folder = folder.parent
    if resolved == folder or inside:
        raise InputError(
            f"{flag} {out}: is (or is inside) the input folder {source if source.is_dir() else folder}; "
            "its images would be overwritten, choose another folder"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{flag} {out}: the folder is not empty; pass --overwrite to replace it")


def check_results_files(source: str | os.PathLike, outputs: dict[str, str | None]) -> None:
    """Refuse results files that would replace the input annotation file or are folders.

    Args:
        source: the input annotation file.
        outputs: option name -> the file it names (None: not given).

    Raises:
        InputError: an output is ``source`` itself or an existing folder.
    """
    for flag, path in outputs.items():
        if path is None:
            continue
        if Path(path).is_dir():
            raise InputError(f"{flag} {path}: is a folder, not a file")
        if Path(path).resolve() == Path(source).resolve():
            raise InputError(f"{flag} {path}: is the input annotation file, which would be overwritten")


@contextlib.contextmanager
def staged_output_dir(out: Path, flag: str = "--out") -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; on success it replaces ``out``.

    On an exception the temporary folder is removed and ``out`` is left as it was. The swap renames
    ``out`` aside, renames the new folder in, then deletes the old one, so at every moment ``out`` holds
    one complete run.

    Args:
        out: the final output folder (its parent is created).
        flag: the option's name for the message.

    Yields:
        Path: the folder to write the outputs into.

    Raises:
        InputError: the folder beside ``out`` cannot be created.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as err:
        raise InputError(f"{flag} {out}: cannot create a folder there ({err.strerror})") from err
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
