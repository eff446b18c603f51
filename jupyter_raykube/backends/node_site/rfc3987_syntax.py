"""A lazy stand-in for the `rfc3987-syntax` package, first on the PYTHONPATH of our Ray nodes.

Every Ray Python process (`ray start`, the dashboard and its agents, each worker) imports
`jsonschema` through `ray.runtime_env`, and `jsonschema` imports `rfc3987_syntax` when it is
installed, as Jupyter's `jsonschema[format-nongpl]` does. That package builds its Lark grammar at
import: about a second of CPU per process, several per node start on a laptop. This module
offers the one name `jsonschema` takes (`is_valid_syntax`) and loads the real package the
first time anything uses it, so IRI checks still work, only later.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_real: ModuleType | None = None


def _load() -> ModuleType:
    """Import the installed package (skipping this directory) and take its place."""
    global _real
    if _real is None:
        path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
        spec = importlib.machinery.PathFinder.find_spec(__name__, path)
        if spec is None or spec.loader is None:
            raise ImportError("rfc3987_syntax is not installed")
        module = importlib.util.module_from_spec(spec)
        sys.modules[__name__] = module
        spec.loader.exec_module(module)
        _real = module
    return _real


def is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
    return _load().is_valid_syntax(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # the import system's own probes (`__path__`) must not load it
        raise AttributeError(name)
    return getattr(_load(), name)
