"""Conformance matrix: every hypergradient method × every generated problem family.

Each family of :mod:`bilevel.testing` carries its reference answers (closed forms, or
extrapolated finite differences for the tanh network). A method is checked against the
reference its mathematics promises:

- ``UNROLLED`` methods compute ∇F_K, the exact derivative of the K-step inner solver:
  reverse mode (plain, checkpointed, truncated at T = K), forward mode, and the discrete
  adjoint (on a gradient flow; on gradient descent through explicit Euler, V3).
- ``EXACT`` methods compute ∇F at the inner solution; they are run after enough inner
  steps that the solver has converged to rounding (the limit of unrolling, V5).
- ``FirstOrder`` drops every Hessian term: ``∇_λ f(w_K) + Cᵀ∇_w f(w_K)``, known from
  ``w_K``.

and the unrolled methods agree with reverse mode to rounding on every family (identities
between methods). Examples per cell: a quarter of the hypothesis profile's (``ci``: 3,
``thorough``: 75); each example is one problem or a batch of two.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel import (
    CG,
    Adjoint,
    Direct,
    FirstOrder,
    FixedPoint,
    Forward,
    GradientDescent,
    GradientFlow,
    Historyless,
    Implicit,
    Neumann,
    Reverse,
    hypergrad,
)
from bilevel.backend import to_numpy
from bilevel.registry import lookup, names
from bilevel.testing import (
    check_hypergrad,
    gradient_flow_problems,
    imaml_tasks,
    mlp_problems,
    quadratic_problems,
    ridge_problems,
)

# ------------------------------------------------------------------------------ families
#: family -> strategy factory (keyword ``steps`` and ``condition_number`` where it has one)
FAMILIES = {
    "quadratic": lambda batch, **kw: quadratic_problems(n=(1, 4), m=(1, 3), batch=batch, **kw),
    "ridge": lambda batch, **kw: ridge_problems(n=(1, 4), batch=batch, **kw),
    "imaml": lambda batch, **kw: imaml_tasks(n=(1, 4), batch=batch, **kw),
    "gradient-flow": lambda batch, **kw: st.one_of(*(
        gradient_flow_problems(n=(1, 3), batch=batch, scheme=scheme, **kw)
        for scheme in ("euler", "heun", "rk4")
    )),
    "mlp": lambda batch, **kw: mlp_problems(batch=batch, **kw),
}
#: tolerance on the unrolled reference: closed forms to rounding, finite differences ~1e-9
UNROLLED_RTOL = {"mlp": 1e-6}
#: families whose reference ``exact`` (∇F at w*) is a closed form
WITH_EXACT = ("quadratic", "ridge", "imaml")


def family(name: str, batches=(None, 2), **kw) -> st.SearchStrategy:
    """One problem or a batch of two."""
    if name == "mlp":
        kw.pop("condition_number", None)
    return st.one_of(*(FAMILIES[name](b, **kw) for b in batches))


#: examples per cell of the matrix: a quarter of the profile's (``ci``: 3, ``thorough``: 75)
CELL = settings(max_examples=max(2, settings.default.max_examples // 4))


# ------------------------------------------------------------------------------ methods
#: methods whose answer is ∇F_K exactly (the derivative of the K-step map)
UNROLLED = {
    "reverse": lambda gen: Reverse(),
    "reverse-checkpoints": lambda gen: Reverse(checkpoints=2),
    "reverse-truncate-K": lambda gen: Reverse(truncate=gen.info["steps"]),
    "forward": lambda gen: Forward(warn_ratio=np.inf),
    "adjoint-store": lambda gen: Adjoint("store"),
    "adjoint-checkpoint": lambda gen: Adjoint("checkpoint", checkpoints=2),
}

#: methods whose answer is ∇F at the inner solution (after a converged inner solve)
EXACT = {
    "implicit-cg": lambda gen: Implicit(CG(tol=1e-12)),
    "implicit-direct": lambda gen: Implicit(Direct()),
    "implicit-neumann": lambda gen: Implicit(Neumann(alpha=gen.info["lr"], maxiter=300)),
    "implicit-fixed-point": lambda gen: Implicit(
        FixedPoint(alpha=gen.info["lr"], maxiter=400, tol=1e-13)
    ),
    "historyless": lambda gen: Historyless(),
}


def dynamics_for(method_name: str, gen):
    """The generated inner solver; for the adjoint on gradient descent, the Euler flow that
    is the same map (``GradientDescent(α, K)`` = ``GradientFlow(αK, K, "euler")``, V3)."""
    dyn = gen.dynamics
    if method_name.startswith("adjoint") and isinstance(dyn, GradientDescent):
        K = gen.info["steps"]
        return GradientFlow(gen.info["lr"] * K, K, scheme="euler")
    return dyn


def first_order_reference(name: str, gen) -> np.ndarray:
    """``∇_λ f(w_K) + Cᵀ∇_w f(w_K)`` from the generated data and ``w_K``."""
    lam = np.asarray(to_numpy(gen.lam))
    data = to_numpy(gen.problem.data)
    if name == "quadratic":
        return data["gamma"] * lam
    if name in ("ridge", "mlp"):  # f does not depend on λ and there is no init map
        return np.zeros_like(lam)
    # imaml, gradient flow: init(θ) = θ, f = ½(w − b)ᵀQ(w − b)
    key = "w_unrolled"
    w = np.asarray(to_numpy(gen.references[key]))
    return np.einsum("...ij,...j->...i", data["Q"], w - data["b"])


def _pairs(methods, families):
    return [pytest.param(m, f, id=f"{m}-{f}") for m in methods for f in families]


# ------------------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("method_name, family_name", _pairs(UNROLLED, FAMILIES))
@CELL
@given(data=st.data())
def test_unrolled_methods(method_name, family_name, data):
    """Against the reference ∇F_K, and equal to reverse mode to rounding."""
    gen = data.draw(family(family_name, steps=(1, 10)), label="problem")
    dynamics = dynamics_for(method_name, gen)
    method = UNROLLED[method_name](gen)
    out = check_hypergrad(
        gen.problem, gen.lam, gen.w0, dynamics=dynamics, method=method,
        reference=gen.references["unrolled"], rtol=UNROLLED_RTOL.get(family_name, 1e-9),
    )
    if method_name != "reverse":
        reverse = hypergrad(gen.problem, gen.lam, gen.w0, dynamics=gen.dynamics,
                            method=Reverse())
        np.testing.assert_allclose(out.grad, reverse.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method_name, family_name", _pairs(EXACT, WITH_EXACT))
@CELL
@given(data=st.data())
def test_exact_methods_match_the_closed_form_at_convergence(method_name, family_name, data):
    # condition number ≤ 4 and K = 120 steps of size 1/L: q^K ≤ 0.75^120 ≈ 1e-15 (a batch
    # of quadratics shares one step 1/max L, too small for the better-conditioned one)
    batches = (None,) if family_name == "quadratic" else (None, 2)
    gen = data.draw(family(family_name, batches, steps=120, condition_number=4.0),
                    label="problem")
    check_hypergrad(
        gen.problem, gen.lam, gen.w0,
        dynamics=gen.dynamics,
        method=EXACT[method_name](gen),
        reference=gen.references["exact"],
        rtol=1e-7,
    )


@pytest.mark.parametrize("family_name", list(FAMILIES))
@CELL
@given(data=st.data())
def test_first_order_matches_its_formula(family_name, data):
    gen = data.draw(family(family_name, steps=(1, 10)), label="problem")
    check_hypergrad(
        gen.problem, gen.lam, gen.w0,
        dynamics=gen.dynamics,
        method=FirstOrder(),
        reference=first_order_reference(family_name, gen),
        rtol=1e-10,
        atol=1e-13,
    )


def test_the_matrix_covers_every_registered_method():
    """A method registered under ``"method"`` needs a row here (or in EXACT/UNROLLED)."""
    covered = {Reverse, Forward, Adjoint, Implicit, Historyless, FirstOrder}
    registered = {lookup("method", name) for name in names("method")}
    missing = sorted(cls.__name__ for cls in registered - covered)
    assert not missing, f"methods without a row in the conformance matrix: {missing}"
