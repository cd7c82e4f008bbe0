"""Modules loaded on first use, for imports too slow to pay where they are not used.

The compiled feature kernels bring numba, about 0.3 s to import, and DuckDB takes about 0.07 s.
Every Snakemake parse reads the feature declarations (the feature version, the row schema) and,
usually, a catalog file, but never measures an image nor opens a database, so those modules are
loaded only when first used.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """The module ``name``, executed when one of its attributes is first read.

    An already imported module is returned as it is.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
