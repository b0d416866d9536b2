"""Reparameterizations ``λ = T(u)`` of constrained hyperparameters.

The outer optimizer moves an unconstrained ``u``; the problem sees ``λ = T(u)`` and the
chain rule gives ``∇_u F = T'(u) ⊙ ∇_λ F`` (elementwise transforms, one multiply).

============  ======================  =============  ==================================
name          λ = T(u)                range of λ     use
============  ======================  =============  ==================================
identity      u                       R              already unconstrained λ
exp           exp(u)                  (0, ∞)         penalties, step sizes
sigmoid       1 / (1 + e^{−u})        (0, 1)         example weights, momentum
Bounded(a,b)  a + (b − a) σ(u)        (a, b)         any box
============  ======================  =============  ==================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..backend import namespace

__all__ = ["Bounded", "Exp", "Identity", "Sigmoid", "Transform", "get_transform"]


def _sigmoid(u: Any) -> Any:
    xp = namespace(u)
    return 0.5 * xp.tanh(0.5 * u) + 0.5


class Transform(ABC):
    """An elementwise bijection ``λ = T(u)`` with derivative and inverse."""

    name = "transform"

    @abstractmethod
    def forward(self, u: Any) -> Any:
        """λ = T(u)."""

    @abstractmethod
    def derivative(self, u: Any) -> Any:
        """T'(u), elementwise."""

    @abstractmethod
    def inverse(self, lam: Any) -> Any:
        """u = T⁻¹(λ); raises when λ is outside the range of T."""

    def vjp(self, u: Any, grad_lam: Any) -> Any:
        """∇_u F = T'(u) ⊙ ∇_λ F."""
        return self.derivative(u) * grad_lam

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Transform):
    """λ = u."""

    name = "identity"

    def forward(self, u: Any) -> Any:
        return u

    def derivative(self, u: Any) -> Any:
        return 0 * u + 1

    def inverse(self, lam: Any) -> Any:
        return lam

    def vjp(self, u: Any, grad_lam: Any) -> Any:
        return grad_lam


class Exp(Transform):
    """λ = exp(u) > 0 (log-parameterized penalties and step sizes)."""

    name = "exp"

    def forward(self, u: Any) -> Any:
        return namespace(u).exp(u)

    def derivative(self, u: Any) -> Any:
        return namespace(u).exp(u)

    def inverse(self, lam: Any) -> Any:
        xp = namespace(lam)
        if not bool(xp.all(lam > 0)):
            raise ValueError("lam0 must be positive for transform='exp' (λ = exp(u))")
        return xp.log(lam)


class Sigmoid(Transform):
    """λ = σ(u) ∈ (0, 1) (example weights, momentum coefficients)."""

    name = "sigmoid"

    def forward(self, u: Any) -> Any:
        return _sigmoid(u)

    def derivative(self, u: Any) -> Any:
        s = _sigmoid(u)
        return s * (1 - s)

    def inverse(self, lam: Any) -> Any:
        xp = namespace(lam)
        if not bool(xp.all((lam > 0) & (lam < 1))):
            raise ValueError("lam0 must lie in (0, 1) for transform='sigmoid' (λ = σ(u))")
        return xp.log(lam) - xp.log1p(-lam)


class Bounded(Transform):
    """λ = a + (b − a) σ(u) ∈ (a, b).

    Parameters
    ----------
    low, high : float
        The open interval ``(a, b)``, ``a < b``.
    """

    name = "bounded"

    def __init__(self, low: float, high: float):
        if not float(low) < float(high):
            raise ValueError(f"Bounded needs low < high, got low={low!r}, high={high!r}")
        self.low, self.high = float(low), float(high)

    def __repr__(self) -> str:
        return f"Bounded({self.low}, {self.high})"

    def forward(self, u: Any) -> Any:
        return self.low + (self.high - self.low) * _sigmoid(u)

    def derivative(self, u: Any) -> Any:
        s = _sigmoid(u)
        return (self.high - self.low) * s * (1 - s)

    def inverse(self, lam: Any) -> Any:
        xp = namespace(lam)
        if not bool(xp.all((lam > self.low) & (lam < self.high))):
            raise ValueError(f"lam0 must lie in ({self.low}, {self.high}) for {self!r}")
        p = (lam - self.low) / (self.high - self.low)
        return xp.log(p) - xp.log1p(-p)


_NAMED = {"identity": Identity, "exp": Exp, "sigmoid": Sigmoid}


def get_transform(spec: str | Transform | None) -> Transform:
    """A :class:`Transform` from ``None`` (identity), a name, or a Transform object."""
    if spec is None:
        return Identity()
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str) and spec.lower() in _NAMED:
        return _NAMED[spec.lower()]()
    raise ValueError(
        f"transform must be None, one of {sorted(_NAMED)}, or a Transform object such as "
        f"Bounded(low, high); got {spec!r}"
    )
