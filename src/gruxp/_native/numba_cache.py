"""numba's on-disk cache for gruxp's step kernels, keyed by the source they are compiled from.

numba's own ``cache=True`` files a function's machine code under a stamp of the file that defines
it. gruxp's kernels inline the shared step functions of another file
(:mod:`gruxp.functional._cell`), whose edit numba would not notice. So these kernels get a cache of
their own: its stamp is a hash of every file their code comes from (and of numba's and gruxp's
versions); numba adds the CPU and its features. A kernel whose stamp differs is compiled afresh.

Where: ``$GRUXP_NUMBA_CACHE`` if set (``off`` turns the cache off), else
``$XDG_CACHE_HOME/gruxp/numba`` (``~/.cache/gruxp/numba``). Where that folder cannot be written,
nothing is cached and the kernels compile in each process, as numba does without a cache. Nothing
of numba's process-wide configuration is changed: each kernel is given its cache alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["cached", "cache_folder"]

_SOURCES = ("functional/_cell.py", "_native/numba_kernels.py", "_native/numba_cache.py")


def cache_folder() -> Path | None:
    """Where the kernels are kept, or None (``GRUXP_NUMBA_CACHE=off``)."""
    where = os.environ.get("GRUXP_NUMBA_CACHE")
    if where is not None:
        return None if where.strip().lower() in ("", "off", "0", "no") else Path(where)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gruxp" / "numba"


@functools.cache
def _stamp() -> str:
    import numba

    # gruxp's version from the loaded package (importing it here would close an import cycle)
    __version__ = getattr(sys.modules.get("gruxp"), "__version__", "")
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{numba.__version__} {__version__}".encode())
    for name in _SOURCES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:20]


def cached(dispatcher: Any) -> Any:
    """``dispatcher`` (a numba ``njit`` function defined at module level) with gruxp's disk cache,
    where one can be had; else as it is."""
    folder = cache_folder()
    if folder is None:
        return dispatcher
    try:
        from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

        class Locator(_CacheLocator):
            def __init__(self, py_func: Any, py_file: str) -> None:
                self._path = str(folder)
                self._name = "" if py_func is None else py_func.__qualname__

            def get_cache_path(self) -> str:
                return self._path

            def get_source_stamp(self) -> str:
                return _stamp()

            def get_disambiguator(self) -> str:
                return f"{self._name}-{_stamp()}"

            @classmethod
            def from_function(cls, py_func: Any, py_file: str) -> Locator:
                return cls(py_func, py_file)

        class Impl(CompileResultCacheImpl):
            _locator_classes = [Locator]

        class Cache(FunctionCache):
            _impl_class = Impl

        cache = Cache(dispatcher.py_func)
        Locator(None, "").ensure_cache_path()  # writable, or no cache at all
    except Exception:  # numba's caching internals moved, or the folder cannot be written
        return dispatcher
    dispatcher._cache = cache
    return dispatcher
