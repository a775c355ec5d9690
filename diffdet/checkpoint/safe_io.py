"""Reading checkpoints without executing code from them, and writing them atomically.

- :func:`torch_load`: ``torch.load(weights_only=True)`` with numpy arrays, scalars and dtypes
  allowlisted (detectron2 checkpoints may hold numpy values outside the weights).
- :func:`load_pickle`: detectron2's ``.pkl`` backbones are plain pickles of numpy arrays (or, for
  third-party backbones such as the ImageNet-22k Swin-B, of torch tensors); a restricted unpickler
  admits numpy's array/scalar reconstruction, torch's tensor reconstruction (storages read back with
  ``weights_only=True``) and plain containers, nothing else.
- :func:`atomic_save`: ``torch.save`` to a temporary file in the target directory, flush, fsync,
  ``os.replace``; a crash leaves either the old file or the new one, never a torn file.
"""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffdet.errors import BadWeightsError, MissingFileError, cut
from diffdet.outputs import write_atomic

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Pickles name numpy's internals by the module of the numpy that wrote them: numpy.core (1.x) or
# numpy._core (2.x). Both spellings resolve to the installed numpy's functions.
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    (f"{package}.{module}", name): obj
    for package in ("numpy.core", "numpy._core")
    for module, name, obj in (
        ("multiarray", "_reconstruct", _multiarray._reconstruct),
        ("multiarray", "scalar", _multiarray.scalar),
        ("numeric", "_frombuffer", _numeric._frombuffer),
    )
}
_NUMPY_GLOBALS[("numpy", "ndarray")] = np.ndarray
_NUMPY_GLOBALS[("numpy", "dtype")] = np.dtype
# numpy >= 1.25 pickles a dtype's class (numpy.dtypes.Float32DType) as well; object dtype excluded.
_NUMPY_DTYPE_CLASSES = [
    t
    for t in vars(getattr(np, "dtypes", object)).values()
    if isinstance(t, type) and issubclass(t, np.dtype) and t.__name__ != "ObjectDType"
]
for _cls in _NUMPY_DTYPE_CLASSES:
    _NUMPY_GLOBALS[("numpy.dtypes", _cls.__name__)] = _cls


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` (how a plain pickle stores a tensor's storage: a legacy
    ``torch.save`` of it) with ``weights_only=True``, so the bytes cannot run code either."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a pickled torch storage must be bytes, got {type(data).__name__}")
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            "refusing a pickled torch storage that holds more than tensor data: "
            + _weights_only_reason(str(e))
        ) from None


def _parameter_data(data: torch.Tensor, requires_grad: bool, backward_hooks: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter`` without the Parameter: only the values are needed."""
    return data


# Plain pickles of torch tensors (Detic's convert-thirdparty-pretrained-model-to-d2.py writes the
# Swin-B .pkl so) name these three; torch's weights_only unpickler admits the same rebuild functions.
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _parameter_data,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
}

_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): codecs.encode,
}
# Containers pickle protocols 2-4 build by calling their type; __builtin__ is Python 2's name.
for _module in ("builtins", "__builtin__"):
    for _name in ("dict", "list", "tuple", "set", "frozenset", "bytearray"):
        _PLAIN_GLOBALS[(_module, _name)] = getattr(builtins, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits numpy arrays, numpy scalars, torch tensors and plain containers only.

    Any other global (a class, ``os.system``, ``builtins.eval``...) raises
    ``pickle.UnpicklingError`` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[key]
        if key in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[key]
        if key in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[key]
        raise pickle.UnpicklingError(
            f"refusing to unpickle global {module}.{name}: only numpy arrays, torch tensors and plain "
            "containers are allowed"
        )


def load_pickle(path: str | os.PathLike) -> Any:
    """Read a plain pickle of numpy arrays, torch tensors and containers (detectron2's ``.pkl`` backbones).

    Args:
        path: the ``.pkl`` file.

    Returns:
        The unpickled object: nested dict/list/tuple of numbers, strings, numpy arrays and scalars, CPU
        tensors.

    Raises:
        MissingFileError (a FileNotFoundError): ``path`` does not exist.
        BadWeightsError (a pickle.UnpicklingError): the file names any other global, holds an
            object-dtype array, or is no pickle (empty, truncated, text); the message names ``path``.
    """
    if not Path(path).is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        try:
            # latin1: Python 2 pickles (detectron2's MSRA files) store array bytes as str.
            obj = RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise BadWeightsError(f"{path}: {err}") from None
        except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as err:
            # what a truncated or foreign byte stream makes the unpickler raise (nothing was executed)
            raise BadWeightsError(
                f"{path}: not a readable pickle ({type(err).__name__}: {cut(str(err))})"
            ) from None
    _reject_object_arrays(obj, str(path))
    return obj


def _reject_object_arrays(obj: Any, where: str) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise BadWeightsError(f"{where}: refusing an object-dtype numpy array")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_object_arrays(value, where)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            _reject_object_arrays(value, where)


def _torch_safe_globals() -> list:
    return [(obj, f"{module}.{name}") for (module, name), obj in _NUMPY_GLOBALS.items()]


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, numpy values admitted.

    Args:
        path: a file written by ``torch.save`` (detectron2 ``.pth`` or a diffdet checkpoint).

    Returns:
        The loaded object, tensors on the CPU (memory-mapped, copy-on-write, for zip-format files).

    Raises:
        MissingFileError (a FileNotFoundError): ``path`` does not exist.
        BadWeightsError (a pickle.UnpicklingError): the file holds objects other than tensors, numpy
            values and plain containers (nothing of it is executed), or is not a torch file (empty,
            truncated, text); the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as f:
        if not is_zip and f.read(1) != pickle.PROTO:
            raise BadWeightsError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            # mmap: tensors are read from the file when used, so loading a model holds no second copy.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise BadWeightsError(
            f"{path}: refusing to load; it is not a plain checkpoint of tensors and containers "
            f"(read with weights_only=True, nothing was executed): {cut(_weights_only_reason(str(e)), 300)}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:  # torch's readers on a truncated or damaged file
        raise BadWeightsError(
            f"{path}: truncated or damaged torch checkpoint ({cut(' '.join(str(e).split()), 120)})"
        ) from None


def _weights_only_reason(message: str) -> str:
    """The specific part of torch's weights_only error, without its generic advice."""
    generic = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
    reasons = []
    for line in message.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.partition("WeightsUnpickler error:")[2].strip()
        if line and not line.startswith(generic):
            reasons.append(line)
    return " ".join(reasons) or message


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    Args:
        obj: anything ``torch.load(weights_only=True)`` can read back: tensors, numbers, strings,
            None and dict/list/tuple of them.
        path: destination; parent directories are created.

    Returns:
        ``path`` as a Path.
    """
    return write_atomic(path, lambda f: torch.save(obj, f))
