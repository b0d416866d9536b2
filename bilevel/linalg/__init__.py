"""Matrix-free linear solvers for ``(A + δI) x = b`` with diagnostics.

Every solver is a frozen dataclass of its options with one signature,
``solver(matvec, b, x0=None, damping=0.0) -> SolveResult``, so solvers are interchangeable
and a solver is just an argument: :class:`CG`, :class:`FixedPoint`, :class:`Neumann` (the
fixed-point iteration with a fixed budget of terms), :class:`Direct`, and for systems that
are not symmetric positive definite :class:`GMRES` (restarted) and :class:`BiCGSTAB`. They register
under the kind ``"solver"`` of :mod:`bilevel.registry` by their ``name``. The functions
:func:`cg`, :func:`fixed_point`, :func:`neumann` and :func:`direct` take the options as
keywords and call the classes.

``matvec`` maps an array of the shape of ``b`` to an array of the same shape. ``b`` is a
vector ``(n,)`` or a batch ``(B, n)`` of independent problems; a batched ``matvec`` acts on
each row with that problem's matrix, and every reduction (dot products, norms, convergence
tests) runs along the last axis.

A problem has converged when ``‖A x − b‖ ≤ max(tol·‖b‖, atol)``. Failures are reported,
never hidden: a CG curvature breakdown (``pᵀAp ≤ 0``), a diverging Neumann series and
non-finite values each stop the affected problem at its last finite iterate, set
``converged=False`` and explain themselves in ``message``.

The arrays' own namespace is used throughout (``bilevel.backend.namespace``), so the
solvers run unchanged on NumPy and CuPy.
"""

from bilevel.linalg.bicgstab import BiCGSTAB, bicgstab
from bilevel.linalg.cg import CG, cg, jacobi
from bilevel.linalg.direct import Direct, direct
from bilevel.linalg.fixed_point import FixedPoint, Neumann, fixed_point, neumann
from bilevel.linalg.gmres import GMRES, gmres
from bilevel.linalg.lanczos import lanczos_max_eigenvalue
from bilevel.linalg.result import SolveResult
from bilevel.linalg.system import LinearSolver

__all__ = [
    "BiCGSTAB",
    "CG",
    "Direct",
    "FixedPoint",
    "GMRES",
    "LinearSolver",
    "Neumann",
    "SolveResult",
    "bicgstab",
    "cg",
    "direct",
    "fixed_point",
    "gmres",
    "jacobi",
    "lanczos_max_eigenvalue",
    "neumann",
]
