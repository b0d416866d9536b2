"""Hypergradient methods, one module each (strategy objects for :func:`bilevel.hypergrad`)."""

from .forward import Forward
from .reverse import Reverse

__all__ = ["Forward", "Reverse"]

try:  # the memory-flat family (implicit, adjoint, historyless)
    from .adjoint import Adjoint  # noqa: F401
    from .historyless import Historyless  # noqa: F401
    from .implicit import Implicit  # noqa: F401

    __all__ += ["Adjoint", "Historyless", "Implicit"]
except ImportError:  # pragma: no cover - during development only
    pass
