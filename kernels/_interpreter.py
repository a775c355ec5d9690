"""A fix for Triton's CPU interpreter (``TRITON_INTERPRET=1``) in Triton <= 3.6 with NumPy >= 2.4.

The interpreter holds every scalar kernel argument as a one-element 1-d NumPy array, and Triton 3.6
gives its tensors ``__index__ = lambda self: int(self.handle.data)``. NumPy 2.4 made ``int()`` of an
array with ndim > 0 an error (deprecated since 1.25), so any ``range`` whose bound is a runtime
argument (``for p0 in range(0, P, BLOCK_P)``) raises ``TypeError: only 0-dimensional arrays can be
converted to Python scalars`` at the launch. The kernels are not at fault: compiled for a GPU they
never go through ``__index__``, and Triton 3.8's interpreter reads ``int(self.handle.data.squeeze())``.

:func:`install` wraps the interpreter's tensor patching so that ``__index__`` squeezes as Triton 3.8
does. It changes nothing when the installed interpreter is already correct (Triton >= 3.8), when
Triton is not interpreting, or when the interpreter's layout is not the one described here.
"""

from __future__ import annotations

import inspect

_BUGGY_INDEX = "int(self.handle.data))"


def _index(self) -> int:
    """``tensor.__index__`` under the interpreter: the scalar of a one-element array of any ndim."""
    return int(self.handle.data.squeeze())


def needs_fix(patch_lang_tensor) -> bool:
    """Whether ``patch_lang_tensor`` (Triton's ``interpreter._patch_lang_tensor``) sets the
    ``__index__`` that fails on one-element 1-d arrays under NumPy >= 2.4."""
    try:
        source = inspect.getsource(patch_lang_tensor)
    except (OSError, TypeError):
        return False
    return "__index__" in source and _BUGGY_INDEX in source


def install() -> bool:
    """Patch Triton's interpreter when it has the ``__index__`` bug; True when a patch is in place."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, "_diffdet_index_fix", False):
        return True
    if not needs_fix(original):
        return False

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)  # the scope restores both patches after the launch

    patch_lang_tensor._diffdet_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
