"""Compile the env steps' numeric kernels with numba, one place for how.

A kernel is a plain Python function over numpy arrays and scalars that loops over envs or assets; numba
compiles it to machine code on its first call in a process. The compiled code is cached on disk next to
the module (its ``__pycache__``, or numba's user cache folder when that is not writable), so only the
first process after a change of the source pays the compilation (about a second a kernel); later ones
load it in milliseconds.

``error_model="numpy"``: a division by zero gives inf or nan as numpy's would, instead of raising, so a
kernel and the numpy formulas it replaces agree bit for bit on every input (tests check them side by
side). ``nogil``: the actor's other threads run while a kernel steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def kernel(function: F) -> F:
    """Return `function` compiled by numba in nopython mode (cached on disk, numpy's float errors)."""
    return cast(F, numba.njit(cache=True, error_model="numpy", nogil=True)(function))
