"""Meta-learning algorithms as specifications of the hypergradient core.

Each algorithm is a :class:`~bilevel.meta.algorithms.specification.Specification`: the
inner objective (support loss ``L̂_i``), the outer objective (query loss ``L_i``), the init
map, the inner dynamics and the hypergradient method, plus the maps between the
meta-parameters ``θ`` and the per-task ``λ_i`` where they differ. One batched
:func:`bilevel.hypergrad` call over the meta-batch returns the per-task hypergradients,
and the meta-gradient of the task-averaged loss is their mean::

    ∇_θ (1/T) Σ_i L_i(φ_i(θ)) = (1/T) Σ_i ∇_{λ_i} L_i(φ_i(λ_i)) |_{λ_i = θ}

=================  ==================================  ====================  ==============
algorithm          inner problem (w, λ)                dynamics              method
=================  ==================================  ====================  ==============
MAML               w = all weights, w₀ = θ             GradientDescent       Reverse()
FOMAML             same                                GradientDescent       FirstOrder()
ANIL               w = head, λ = θ, w₀ = θ_head         GradientDescent       Reverse()
Reptile            w = all weights, w₀ = θ             GradientDescent       (none)
IMAML              L̂(w) + (reg/2)‖w − θ‖², w₀ = θ      GradientDescent       Implicit(CG)
AMAML              L̂(w) + (r/2)‖w − θ‖², w₀ = θ        GradientFlow          Adjoint()
MemoryReduced      w = head on fixed features, λ=θ_bb  GradientDescent       Implicit(CG)
CML(base)          base's, λ = (λ_base, ψ)             base's                base's
=================  ==================================  ====================  ==============

Every algorithm takes ``method=`` to override the hypergradient method (e.g. MAML with
``Reverse(checkpoints=4)``, iMAML with ``Historyless()``). The algorithms are registered
under the kind ``"algorithm"`` of :mod:`bilevel.registry` (``lookup("algorithm",
"A-MAML")``). ``meta_gradient`` returns the meta-gradient and a :class:`MetaStep`.

The model follows the protocol of :mod:`bilevel.meta.models`: ``init(rng, backend)``,
``apply(theta, x)`` for ``theta`` of shape ``(T, n)`` and ``x`` of shape ``(T, N, ...)``,
``split`` (``"backbone"``/``"head"`` slices of ``θ``), ``features``, ``head``, ``n_params``,
``loss(pred, y) -> (T,)`` and ``accuracy(pred, y) -> (T,)``.
"""

# isort: off
# registration order = the order of bilevel.registry.names("algorithm")
from .maml import FOMAML, MAML
from .anil import ANIL
from .reptile import Reptile
from .imaml import IMAML
from .amaml import AMAML
from .memory_reduced import MemoryReduced
from .cml import CML, cooperative
from .pretrain import Pretrain

# isort: on
from ..tasks import Episode
from .base import MetaAlgorithm, Specified
from .specification import Specification, append_parameters
from .step import MetaStep

TaskData = Episode
"""The data a meta-batch's objectives see: the :class:`~bilevel.meta.tasks.Episode` type."""

__all__ = [
    "AMAML",
    "ANIL",
    "CML",
    "FOMAML",
    "IMAML",
    "MAML",
    "MemoryReduced",
    "MetaAlgorithm",
    "MetaStep",
    "Pretrain",
    "Reptile",
    "Specification",
    "Specified",
    "append_parameters",
    "cooperative",
]
