"""Per-task objectives of the meta-learning problems, batched over the task axis.

Every function here maps ``(w, λ, data)`` with ``w`` of shape ``(T, n_w)``, ``λ`` of shape
``(T, m)`` and ``data`` an :class:`~bilevel.meta.tasks.Episode` to the per-task values
``(T,)``; the specifications bind the model (and the parameter split) with
:func:`functools.partial`, so they stay plain picklable objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from autograd.core import make_vjp

import bilevel.numpy as bnp

from ...backend import device, namespace
from .. import conv_oracles, model_oracles
from ..conv_oracles import Conv4Oracles
from ..model_oracles import MLPOracles

__all__ = [
    "Penalized",
    "cache_features",
    "cached_head_grad",
    "columns",
    "fast_oracles",
    "head_loss",
    "sqnorm",
    "weights_loss",
    "with_backbone",
]

FEATURES = "support_features"


def sqnorm(x: Any) -> Any:
    """Per-task squared norm ``‖x_i‖²`` of a ``(T, n)`` array: shape ``(T,)``."""
    return bnp.sum(x * x, axis=-1)


def _set(data: Any, which: str) -> tuple[Any, Any]:
    """``(x, y)`` of the ``"support"`` or ``"query"`` set."""
    return getattr(data, f"x_{which}"), getattr(data, f"y_{which}")


def weights_loss(model: Any, which: str, w: Any, lam: Any, data: Any) -> Any:
    """``L_i(w_i)``: the model with all weights ``w`` on the ``which`` set of each task."""
    x, y = _set(data, which)
    return model.loss(model.apply(w, x), y)


def head_loss(model: Any, backbone: slice | None, which: str, w: Any, lam: Any,
              data: Any) -> Any:
    """``L_i(head(w_i, features(λ_bb, x)))``: head ``w`` on backbone features.

    ``backbone`` is the slice of λ holding the backbone (``None``: λ is the backbone).
    """
    x, y = _set(data, which)
    lam_bb = lam if backbone is None else lam[:, backbone]
    return model.loss(model.head(w, model.features(lam_bb, x)), y)


def columns(part: slice, lam: Any) -> Any:
    """``λ[:, part]`` (ANIL's init map ``w₀ = θ_head``)."""
    return lam[:, part]


def with_backbone(model: Any, backbone: slice | None, w: Any, lam: Any) -> Any:
    """Full model parameters ``(T, n)``: backbone from λ, head ``w``, in the model's order."""
    parts = {"backbone": lam if backbone is None else lam[:, backbone], "head": w}
    order = sorted(parts, key=lambda k: model.split[k].start or 0)
    return bnp.concatenate([parts[k] for k in order], axis=1)


def identity(x: Any) -> Any:
    """``x`` (the init map ``w₀ = λ`` of MAML)."""
    return x


def inner_weights(w: Any, lam: Any) -> Any:
    """The adapted model parameters are the inner parameters (``φ_i = w_i``)."""
    return w


@dataclass(frozen=True)
class Penalized:
    """``fn(w, λ, data) + (ρ/2)‖w − λ‖²`` (``proximal``) or ``+ (ρ/2)‖w‖²`` (ridge)."""

    fn: Callable[..., Any]
    rho: float
    proximal: bool = True

    def __call__(self, w: Any, lam: Any, data: Any) -> Any:
        loss = self.fn(w, lam, data)
        return loss + 0.5 * self.rho * sqnorm(w - lam if self.proximal else w)


def penalized(fn: Callable[..., Any], rho: float, proximal: bool = True) -> Callable[..., Any]:
    """``fn`` plus the quadratic term of :class:`Penalized`; ``fn`` itself when ``ρ = 0``."""
    return Penalized(fn, rho, proximal) if rho else fn


def cache_features(model: Any, lam: Any, data: Any) -> Any:
    """``data`` with the support features ``features(λ, x_support)`` in ``info``.

    The memory-reduced inner loop reads them as constants (:func:`cached_head_grad`).
    """
    info = dict(data.info, **{FEATURES: model.features(lam, data.x_support)})
    return type(data)(data.x_support, data.y_support, data.x_query, data.y_query, info)


def cached_head_grad(model: Any, head_reg: float, w: Any, lam: Any, data: Any) -> Any:
    """``∇_y g`` on the cached support features (the backbone is a constant here).

    One head forward and backward per call, no tape through the backbone.
    """
    feats = data.info[FEATURES]

    def loss(y: Any) -> Any:
        value = model.loss(model.head(y, feats), data.y_support)
        return bnp.sum(value + 0.5 * head_reg * sqnorm(y) if head_reg else value)

    vjp, _ = make_vjp(loss, w)
    return vjp(namespace(w).asarray(1.0, dtype=w.dtype, device=device(w)))


# ------------------------------------------------------------------ analytic oracles
def _loss_of(fn: Any, which: str) -> tuple[Any, float, bool]:
    """``(partial, ρ, proximal)`` of ``fn = partial(…, which)`` or its :class:`Penalized`."""
    rho, proximal = 0.0, True
    if isinstance(fn, Penalized):
        fn, rho, proximal = fn.fn, float(fn.rho), fn.proximal
    if not (isinstance(fn, partial) and fn.args and fn.args[-1] == which and not fn.keywords):
        return None, rho, proximal
    return fn, rho, proximal


def oracles_class(model: Any) -> type | None:
    """The analytic oracles of ``model``: :class:`~bilevel.meta.model_oracles.MLPOracles`
    (an MLP), :class:`~bilevel.meta.conv_oracles.Conv4Oracles` (Conv4), else ``None``."""
    if model_oracles.supports(model):
        return MLPOracles
    return Conv4Oracles if conv_oracles.supports(model) else None


def fast_oracles(inner: Any, outer: Any) -> dict[str, Callable[..., Any]] | None:
    """Analytic oracles (:mod:`bilevel.meta.model_oracles`, :mod:`bilevel.meta.conv_oracles`)
    for ``(g, f)``, or ``None``.

    Recognized: :func:`weights_loss` on the support and query sets of a supported model
    (an MLP or Conv4: MAML, A-MAML), each optionally :class:`Penalized` with a proximal
    term (iMAML, A-MAML), and :func:`head_loss` on both sets (ANIL). Anything else
    (another model, a ridge term, appended parameters) returns ``None`` and the problem
    derives its oracles by autograd.
    """
    g, rho_g, prox_g = _loss_of(inner, "support")
    f, rho_f, prox_f = _loss_of(outer, "query")
    if g is None or f is None or not (prox_g and prox_f) or g.func is not f.func:
        return None
    oracles = oracles_class(g.args[0]) if g.args[:-1] == f.args[:-1] else None
    if oracles is None:
        return None
    model = g.args[0]
    if g.func is weights_loss:
        return oracles(model, rho=rho_g, rho_outer=rho_f).table()
    if g.func is head_loss and not rho_g and not rho_f:
        return oracles(model, head=True, backbone=g.args[1]).table()
    return None
