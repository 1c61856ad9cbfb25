"""Read numpy arrays from (gzipped) pickle files without running code from them.

Some datasets on the package index ship only as pickles, and unpickling can call any importable
function (``os.system`` included). Two guards, both applied before any array is used:

1. the file's SHA-256 must equal a hash pinned in studio (`verify_sha256`), so a modified or
   substituted file is refused before it is opened as a pickle;
2. the unpickler resolves only the globals numpy arrays are rebuilt from (`NumpyOnlyUnpickler`);
   any other global, e.g. ``posix.system``, is refused, and object arrays are refused after loading.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from studio.errors import DataError


class ChecksumError(DataError):
    """A data file's SHA-256 differs from the pinned one."""


class UnsafePickleError(DataError):
    """A pickle asks for something other than numpy arrays."""


def _reconstruct() -> Any:
    """numpy's array-rebuilding function (``numpy._core`` since numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct as function
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as function
    return function


# The globals a pickled ndarray names: the rebuild function (under its numpy 1 and numpy 2 module),
# the array type and the dtype type. Tuples and lists are pickle opcodes, not globals.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays (and tuples, lists, dicts of them) and nothing else."""

    def __init__(self, file: io.BufferedIOBase, source: str, encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load {module}.{name} from a pickle (only numpy arrays are allowed)"
            )
        return resolve()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise `ChecksumError` naming the file and both hashes unless the file has SHA-256 ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has SHA-256 {actual}, expected {expected}: the file was modified or is another "
            f"version; reinstall the package that provides it"
        )


def _check_arrays(value: Any, source: str) -> None:
    """Object arrays could hold anything; only plain numeric arrays (in tuples/lists/dicts) pass."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise UnsafePickleError(f"{source}: holds an object array; only numeric arrays are allowed")
    elif isinstance(value, (tuple, list)):
        for item in value:
            _check_arrays(item, source)
    elif isinstance(value, dict):
        for item in value.values():
            _check_arrays(item, source)


def load_pickled_arrays(path: Path, sha256: str, encoding: str = "ASCII") -> Any:
    """Verify ``path`` against ``sha256``, then unpickle it (gunzipped if it is gzip) numpy-only.

    ``encoding`` is for Python 2 pickles, whose byte strings need ``latin1``.
    """
    path = Path(path)
    verify_sha256(path, sha256)
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as handle:
            value = NumpyOnlyUnpickler(handle, str(path), encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read {path} as a pickle of numpy arrays: {exc}") from None
    _check_arrays(value, str(path))
    return value
