"""Fixed-step explicit Runge–Kutta schemes and their exact discrete adjoints.

An explicit scheme with Butcher tableau ``(a, b, c)`` advances the autonomous ODE
``dy/dt = f(y)`` (parameters closed over in ``f``) by::

    Y_i = y + h Σ_{j<i} a_ij k_j,    k_i = f(Y_i),    i = 1..s
    y⁺  = y + h Σ_i b_i k_i

:func:`rk_step_vjp` is the exact reverse-mode derivative of that map (the *discrete*
adjoint, "discretize-then-optimize", theory §2.6 and identity V3): for explicit
Euler it is the reverse unroll of gradient descent. :func:`rk_step_jvp` is the forward-mode
derivative. Both cost one VJP/JVP of ``f`` per stage.

``y`` is a single array: a flat vector ``(n,)`` or a batch ``(B, n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bilevel.backend import name_of, namespace

__all__ = [
    "SCHEMES",
    "ODEDivergenceError",
    "Tableau",
    "get_scheme",
    "integrate",
    "rk_stages",
    "rk_step",
    "rk_step_jvp",
    "rk_step_vjp",
]

Array = Any


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge–Kutta scheme.

    Attributes
    ----------
    name
        Registry name.
    a
        Strictly lower-triangular stage coefficients, ``a[i][j]`` for ``j < i`` (rows of
        length ``i``, so ``a[0] = ()``).
    b
        Quadrature weights (sum to 1).
    c
        Stage times ``c_i = Σ_j a_ij`` (unused for autonomous ``f``, kept for reference).
    order
        Global order of accuracy ``p``: error ``O(h^p)`` at a fixed horizon.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.a) != s or len(self.c) != s or s == 0:
            raise ValueError(f"tableau {self.name!r}: a, b, c must have the same number of stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(
                    f"tableau {self.name!r}: row {i} of a must have {i} entries (explicit scheme)"
                )

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (evaluations of ``f`` per step)."""
        return len(self.b)


SCHEMES: dict[str, Tableau] = {
    "euler": Tableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1),
    "heun": Tableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2),
    "rk4": Tableau(
        "rk4",
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
        c=(0.0, 0.5, 0.5, 1.0),
        order=4,
    ),
}


class ODEDivergenceError(FloatingPointError):
    """An integration produced non-finite values.

    Attributes
    ----------
    step
        Index ``k`` of the step whose result ``y_{k+1}`` was non-finite.
    y
        The last finite state ``y_k``.
    """

    def __init__(self, message: str, step: int, y: Array):
        super().__init__(message)
        self.step = step
        self.y = y

    def __reduce__(self) -> tuple:  # pickles (re-raised from a worker process)
        return type(self), (str(self), self.step, self.y), self.__dict__


def get_scheme(name_or_tableau: str | Tableau) -> Tableau:
    """The :class:`Tableau` named ``name_or_tableau`` (a tableau is returned as is).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if isinstance(name_or_tableau, Tableau):
        return name_or_tableau
    if isinstance(name_or_tableau, str) and name_or_tableau.lower() in SCHEMES:
        return SCHEMES[name_or_tableau.lower()]
    raise ValueError(
        f"unknown Runge-Kutta scheme {name_or_tableau!r}; choose one of {sorted(SCHEMES)} "
        "or pass a bilevel.ode.Tableau"
    )


def _check_h(h: Any) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"h (the step size) must be a Python float, got {type(h).__name__}")
    return float(h)


def _combine(y: Array, h: float, coeffs: tuple[float, ...], ks: list[Array]) -> Array:
    """``y + h Σ_j coeffs_j k_j``, skipping zero coefficients."""
    out = y
    for coef, k in zip(coeffs, ks, strict=False):
        if coef != 0.0:
            out = out + (h * coef) * k
    return out


def _stages_and_slopes(
    f: Callable[[Array], Array], y: Array, h: float, tab: Tableau
) -> tuple[list[Array], list[Array]]:
    """Stage points ``Y_i`` and slopes ``k_i = f(Y_i)``."""
    Ys: list[Array] = []
    ks: list[Array] = []
    for i in range(tab.stages):
        Y = _combine(y, h, tab.a[i], ks)
        Ys.append(Y)
        ks.append(f(Y))
    return Ys, ks


def rk_stages(f: Callable[[Array], Array], y: Array, h: float, scheme: str | Tableau) -> list:
    """Stage points ``Y_i = y + h Σ_{j<i} a_ij f(Y_j)`` of one step, ``i = 1..s``.

    These are the points at which ``f`` is evaluated; pass them to :func:`rk_step_vjp` to
    avoid recomputing them. Cost: ``s − 1`` evaluations of ``f``; memory ``s`` arrays.
    """
    tab = get_scheme(scheme)
    h = _check_h(h)
    Ys: list[Array] = []
    ks: list[Array] = []
    for i in range(tab.stages):
        Y = _combine(y, h, tab.a[i], ks)
        Ys.append(Y)
        if i + 1 < tab.stages:
            ks.append(f(Y))
    return Ys


def rk_step(f: Callable[[Array], Array], y: Array, h: float, scheme: str | Tableau) -> Array:
    """One explicit Runge–Kutta step ``y⁺ = y + h Σ_i b_i f(Y_i)``.

    Parameters
    ----------
    f
        Autonomous vector field ``y -> dy/dt`` (parameters closed over).
    y
        State, ``(n,)`` or ``(B, n)``.
    h
        Step size (negative integrates backward in time).
    scheme
        Name in :data:`SCHEMES` (``"euler"``, ``"heun"``, ``"rk4"``) or a :class:`Tableau`.

    Returns
    -------
    Array
        ``y⁺``, shape of ``y``. Cost: ``s`` evaluations of ``f``.
    """
    tab = get_scheme(scheme)
    h = _check_h(h)
    _, ks = _stages_and_slopes(f, y, h, tab)
    return _combine(y, h, tab.b, ks)


def _add(acc: Any, term: Any) -> Any:
    return term if acc is None else acc + term


def rk_step_vjp(
    f: Callable[[Array], Array],
    f_vjp: Callable[[Array, Array], tuple[Any, Any]],
    y: Array,
    h: float,
    scheme: str | Tableau,
    cot: Array,
    stages: list | None = None,
) -> tuple[Array, Any]:
    """Exact vector–Jacobian product of one :func:`rk_step` (the discrete adjoint).

    With ``c = cot`` the cotangent of ``y⁺`` and ``f_vjp(Y, u) = (J_y(Y)ᵀu, J_p(Y)ᵀu)``,
    stages are visited backward, ``i = s..1``::

        k̄_i = h (b_i c + Σ_{l>i} a_li Ȳ_l),    (Ȳ_i, p̄_i) = f_vjp(Y_i, k̄_i)
        ȳ = c + Σ_i Ȳ_i,    p̄ = Σ_i p̄_i

    For Euler this is ``ȳ = c + h J(y)ᵀc``: with ``f = −∇g`` the reverse step of gradient
    descent, ``c − h H(y) c``.

    Parameters
    ----------
    f
        The vector field (used only to recompute stage points when ``stages`` is None).
    f_vjp
        ``(Y, u) -> (u_y, u_p)``: VJP of ``f`` at ``Y`` with respect to ``y`` and to ``f``'s
        parameters ``p`` (any objects supporting ``+``).
    y
        State at the start of the step.
    h
        Step size.
    scheme
        Scheme name or :class:`Tableau`.
    cot
        Cotangent of ``y⁺`` (shape of ``y``).
    stages
        Optional stage points from :func:`rk_stages`.

    Returns
    -------
    (cot_y, cot_p)
        ``cot_p`` is ``None`` only for a tableau with no contributing stage.

    Notes
    -----
    Cost: ``s`` VJPs of ``f`` (plus ``s − 1`` evaluations of ``f`` without ``stages``).
    Memory: ``s`` stage points and ``s`` stage cotangents.
    """
    tab = get_scheme(scheme)
    h = _check_h(h)
    if tuple(getattr(cot, "shape", ())) != tuple(getattr(y, "shape", ())):
        raise ValueError(
            f"cot must have the shape of y {tuple(y.shape)}, got {tuple(getattr(cot, 'shape', ()))}"
        )
    if stages is None:
        stages = rk_stages(f, y, h, tab)
    elif len(stages) != tab.stages:
        raise ValueError(f"stages must hold {tab.stages} stage points for {tab.name!r}, "
                         f"got {len(stages)}")
    s = tab.stages
    Ybar: list[Any] = [None] * s
    cot_y = cot
    cot_p = None
    for i in range(s - 1, -1, -1):
        kbar = None
        if tab.b[i] != 0.0:
            kbar = (h * tab.b[i]) * cot
        for l_ in range(i + 1, s):
            coef = tab.a[l_][i]
            if coef != 0.0 and Ybar[l_] is not None:
                kbar = _add(kbar, (h * coef) * Ybar[l_])
        if kbar is None:  # this stage does not reach y⁺
            continue
        yb, pb = f_vjp(stages[i], kbar)
        Ybar[i] = yb
        cot_y = cot_y + yb
        cot_p = _add(cot_p, pb)
    return cot_y, cot_p


def rk_step_jvp(
    f: Callable[[Array], Array],
    f_jvp: Callable[[Array, Array, Any], tuple[Array, Array]],
    y: Array,
    h: float,
    scheme: str | Tableau,
    ty: Array,
    tp: Any,
) -> tuple[Array, Array]:
    """One :func:`rk_step` and its forward tangent (Jacobian–vector product).

    With ``f_jvp(Y, t, tp) = (f(Y), J_y(Y) t + J_p(Y) tp)``::

        Ẏ_i = ẏ + h Σ_{j<i} a_ij k̇_j,    (k_i, k̇_i) = f_jvp(Y_i, Ẏ_i, tp)
        y⁺ = y + h Σ b_i k_i,            ẏ⁺ = ẏ + h Σ b_i k̇_i

    Parameters
    ----------
    f
        The vector field (kept for the common signature; ``f_jvp`` supplies ``f(Y)``).
    f_jvp
        ``(Y, t, tp) -> (f(Y), J_y t + J_p tp)``.
    y, ty
        State and its tangent (same shape).
    h
        Step size.
    scheme
        Scheme name or :class:`Tableau`.
    tp
        Tangent of the parameters of ``f``, passed through to ``f_jvp``.

    Returns
    -------
    (y_next, t_next)
        Cost: ``s`` JVPs of ``f``, no separate evaluation of ``f``.
    """
    tab = get_scheme(scheme)
    h = _check_h(h)
    ks: list[Array] = []
    kdots: list[Array] = []
    for i in range(tab.stages):
        Y = _combine(y, h, tab.a[i], ks)
        Ydot = _combine(ty, h, tab.a[i], kdots)
        k, kdot = f_jvp(Y, Ydot, tp)
        ks.append(k)
        kdots.append(kdot)
    return _combine(y, h, tab.b, ks), _combine(ty, h, tab.b, kdots)


def integrate(
    f: Callable[[Array], Array],
    y0: Array,
    h: float,
    steps: int,
    scheme: str | Tableau,
    callback: Callable[[int, Array], None] | None = None,
    *,
    check_finite: bool = True,
) -> Array:
    """``y_K`` after ``K = steps`` fixed steps ``y_{k+1} = rk_step(f, y_k, h, scheme)``.

    Parameters
    ----------
    f
        Autonomous vector field.
    y0
        Initial state ``(n,)`` or ``(B, n)``.
    h
        Step size; the horizon is ``T = h·steps``.
    steps
        Number of steps ``K >= 0``.
    scheme
        Scheme name or :class:`Tableau`.
    callback
        Optional ``(k, y_k) -> None`` called for ``k = 0..K`` (initial state included).
    check_finite
        Raise :class:`ODEDivergenceError` (with the step index and the last finite state)
        when a state has a non-finite entry, instead of propagating NaN: at once on NumPy;
        on other backends after the last step (the test stays on the device, one read per
        call), with the same step and state.

    Returns
    -------
    Array
        ``y_K``. Cost: ``s·K`` evaluations of ``f``; memory: one state plus the stages.
    """
    tab = get_scheme(scheme)
    h = _check_h(h)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    xp = namespace(y0)
    y = y0
    what = f"{tab.name}, h={h:g}, {steps} steps"
    watch = _Divergence(xp, y0, what) if check_finite else None
    if callback is not None:
        callback(0, y)
    for k in range(steps):
        y_next = rk_step(f, y, h, tab)
        if watch is not None:
            watch.record(k, y, y_next)
        y = y_next
        if callback is not None:
            callback(k + 1, y)
    if watch is not None:
        watch.read()
    return y


class _Divergence:
    """The non-finite test of :func:`integrate`: immediate on NumPy; elsewhere the first
    non-finite step and the last finite state stay on the device until :meth:`read`."""

    def __init__(self, xp: Any, y0: Array, what: str) -> None:
        self.xp, self.host, self.what = xp, name_of(y0) == "numpy", what
        self.first: Any = None if self.host else xp.full((), -1.0, dtype=y0.dtype,
                                                           device=y0.device)
        self.last = y0  # the last finite state

    def record(self, k: int, y: Array, y_next: Array) -> None:
        """Test ``y_{k+1} = y_next`` (``y = y_k``)."""
        xp = self.xp
        if self.host:
            if not bool(xp.all(xp.isfinite(y_next))):
                self.first, self.last = k, y
                self.read()
            return
        fresh = ~xp.all(xp.isfinite(y_next)) & (self.first < 0)
        self.first = xp.where(fresh, float(k), self.first)
        self.last = xp.where(self.first < 0, y_next, self.last)

    def read(self) -> None:
        """Raise :class:`ODEDivergenceError` if a state was not finite (one read)."""
        step = self.first if self.host else int(self.first)
        if step is None or step < 0:
            return
        raise ODEDivergenceError(
            f"ODE integration ({self.what}) produced non-finite values at step {step + 1}: "
            "the flow blows up or h is beyond the stability region (reduce h or use a "
            "higher-order scheme)",
            step=step,
            y=self.last,
        )
