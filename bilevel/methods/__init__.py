"""Hypergradient methods, one module each (strategy objects for :func:`~bilevel.api.hypergrad`).

Each method is a small frozen dataclass registered under its ``name``
(``bilevel.registry.lookup("method", "reverse")``); the types they share (``Method``, the
result, state, warning and error classes) are in :mod:`bilevel.methods.base`. The unrolled
reverse recursion exists once, :func:`bilevel.methods.reverse.unrolled_vjp`: ``Reverse``
and the discrete ``Adjoint`` both run it.

==================  =====================  ==========================  =====================
method              memory                 time                        answer
==================  =====================  ==========================  =====================
``Reverse``         O(K·n) (O(c·n), O(T·n)) K grads + K HVPs            exact for F_K
``Forward``         O(n·m)                 K·m JVPs                    exact for F_K
``Implicit``        O(n + m)               K grads + J HVPs            IFT at w_K
``Adjoint``         O(c·n) or O(n)         ODE solve + K·s HVPs        exact / O(h) for flow
``Historyless``     O(n + m)               K grads + K HVPs            IFT, single loop
``FirstOrder``      O(n + m)               K grads + 1                 first-order (FOMAML)
==================  =====================  ==========================  =====================
"""

from .adjoint import Adjoint
from .first_order import FirstOrder
from .forward import Forward
from .historyless import Historyless
from .implicit import Implicit
from .reverse import Reverse

__all__ = ["Adjoint", "FirstOrder", "Forward", "Historyless", "Implicit", "Reverse"]
