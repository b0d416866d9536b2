"""The differentiable array functions the generated objectives are written with.

``bilevel.numpy`` (backend-generic, runs on CuPy) is used when it provides the functions;
``autograd.numpy`` (NumPy only) otherwise. Both are traced by autograd's engine.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

_NAMES = ("einsum", "exp", "matmul", "reshape", "sum", "tanh", "transpose")


def _load() -> Any:
    try:
        import bilevel.numpy as bnp
    except ImportError:  # pragma: no cover - bilevel.numpy always ships with bilevel
        bnp = None
    if bnp is not None and all(hasattr(bnp, name) for name in _NAMES):
        return SimpleNamespace(**{name: getattr(bnp, name) for name in _NAMES}, source="bnp")
    import autograd.numpy as anp

    return SimpleNamespace(
        **{name: getattr(anp, name) for name in _NAMES}, source="autograd.numpy"
    )


ops = _load()
