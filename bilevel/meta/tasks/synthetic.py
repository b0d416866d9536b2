"""Synthetic task families: sinusoid regression, quadratic tasks with closed forms, and
A-MAML's closed-form regression families (Alpine2D, CosMixture, CosMixture2D)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bilevel import backend as _backend

from .base import Episode, TaskSampler, check_count, check_rng

__all__ = ["Alpine2D", "CosMixture", "CosMixture2D", "FunctionFamily", "QuadraticTasks",
           "Sinusoid"]


def _check_range(name: str, bounds: Any, positive: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {bounds!r}") from err
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi) or (positive and lo <= 0):
        need = "0 < low <= high" if positive else "low <= high"
        raise ValueError(f"{name} must satisfy {need} (finite), got {bounds!r}")
    return lo, hi


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    return dt


class Sinusoid(TaskSampler):
    """Sinusoid regression tasks of the MAML paper (Finn, Abbeel and Levine, 2017, §5.1).

    Task ``i`` is ``y = A_i sin(x − φ_i)`` with amplitude ``A_i ~ U[0.1, 5]``, phase
    ``φ_i ~ U[0, π]`` and inputs ``x ~ U[−5, 5]``; support and query points are drawn
    independently from the same task. Optional Gaussian noise of standard deviation
    ``noise`` is added to the targets. Cost O(T·(n_shot + n_query)).

    Parameters
    ----------
    n_shot, n_query
        Support and query points per task (MAML: K = 10 support points, 10 query points).
    amplitude, phase, x_range
        Sampling ranges.
    noise
        Target noise standard deviation (0: noiseless, as in the paper).
    backend
        ``"numpy"`` or ``"cupy"`` (default: :func:`bilevel.backend.current`).
    dtype
        Float dtype of the arrays (float64 by default).

    Episodes hold ``x_*`` of shape ``(T, N, 1)``, ``y_*`` of shape ``(T, N, 1)`` and
    ``info = {"amplitude": (T,), "phase": (T,)}``; ``loss = "mse"``.
    """

    loss = "mse"

    def __init__(
        self,
        n_shot: int = 10,
        n_query: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, np.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise: float = 0.0,
        backend: str | None = None,
        dtype: Any = "float64",
    ):
        self.n_shot = check_count("n_shot", n_shot)
        self.n_query = check_count("n_query", n_query)
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.noise = float(noise)
        self.dtype = _check_dtype(dtype)
        self._set_backend(backend)

    def function(self, x: Any, amplitude: Any, phase: Any) -> Any:
        """The noiseless task function ``A sin(x − φ)`` (NumPy/CuPy arrays broadcast)."""
        xp = _backend.module(_backend.name_of(x, amplitude, phase))
        return amplitude * xp.sin(x - phase)

    def _sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        amp = rng.uniform(*self.amplitude, size=n_tasks)
        phase = rng.uniform(*self.phase, size=n_tasks)
        n = self.n_shot + self.n_query
        x = rng.uniform(*self.x_range, size=(n_tasks, n, 1))
        y = amp[:, None, None] * np.sin(x - phase[:, None, None])
        if self.noise:
            y = y + self.noise * rng.standard_normal(y.shape)
        x, y = x.astype(self.dtype), y.astype(self.dtype)
        s = self.n_shot
        info = {"amplitude": amp.astype(self.dtype), "phase": phase.astype(self.dtype)}
        return Episode(x[:, :s], y[:, :s], x[:, s:], y[:, s:], info)


class QuadraticTasks(TaskSampler):
    """Quadratic tasks with known optima, for the closed-form checks of iMAML, A-MAML, MAML.

    Task ``i`` has the support loss ``L̂_i(φ) = ½(φ − a_i)ᵀP_i(φ − a_i)`` and the query
    loss ``L_i(φ) = ½(φ − b_i)ᵀQ_i(φ − b_i)`` on ``φ ∈ R^dim``. Both are least squares
    in disguise: with ``P_i = R_iᵀR_i`` (``R_i = diag(√s) Uᵀ``, ``U`` a random rotation and
    the eigenvalues ``s ~ U[curvature]``), ``L̂_i(φ) = ½‖R_iφ − R_i a_i‖²``. So the episode
    stores ``x_support = R_i`` ``(T, dim, dim)`` and ``y_support = R_i a_i`` ``(T, dim, 1)``
    (likewise ``x_query``, ``y_query`` from ``Q_i``), and
    :class:`bilevel.meta.models.QuadraticModel` (prediction ``x φ``, loss half the sum of
    squares) reproduces the two quadratics exactly with the generic model protocol.

    The task optima are ``a_i = center + task_std·ε_i`` and ``b_i = a_i + query_shift·η_i``
    (``ε, η`` standard normal); ``info`` holds ``P, a, Q, b`` as arrays of shapes
    ``(T, dim, dim)`` and ``(T, dim)``. Cost O(T·dim³) per episode (the rotations).

    Parameters
    ----------
    dim
        Parameter dimension ``d`` (so ``n_shot = n_query = dim`` rows per task).
    curvature
        Eigenvalue range of ``P_i`` and ``Q_i``; ``low > 0`` makes them positive definite.
    task_std
        Spread of the support optima ``a_i`` around ``center``.
    query_shift
        Distance scale between query and support optima (0: the same optimum).
    center
        Mean of the optima (scalar or ``(dim,)``; default 0).
    backend, dtype
        As for :class:`Sinusoid`.
    """

    loss = "mse"

    def __init__(
        self,
        dim: int = 5,
        curvature: tuple[float, float] = (0.5, 2.0),
        task_std: float = 1.0,
        query_shift: float = 0.0,
        center: Any = 0.0,
        backend: str | None = None,
        dtype: Any = "float64",
    ):
        self.dim = check_count("dim", dim)
        self.n_shot = self.n_query = self.dim
        self.curvature = _check_range("curvature", curvature, positive=True)
        for name, v in (("task_std", task_std), ("query_shift", query_shift)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.task_std = float(task_std)
        self.query_shift = float(query_shift)
        c = np.broadcast_to(np.asarray(_backend.to_numpy(center), dtype=float), (self.dim,))
        if not np.all(np.isfinite(c)):
            raise ValueError("center must be finite")
        self.center = np.array(c)
        self.dtype = _check_dtype(dtype)
        self._set_backend(backend)

    def _roots(self, n_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """``R = diag(√s) Uᵀ`` with ``U`` Haar-random orthogonal and ``s ~ U[curvature]``."""
        g = rng.standard_normal((n_tasks, self.dim, self.dim))
        u, r = np.linalg.qr(g)
        u = u * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
        s = rng.uniform(*self.curvature, size=(n_tasks, self.dim))
        return np.sqrt(s)[:, :, None] * np.swapaxes(u, -1, -2)

    def _sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        d = self.dim
        r_s = self._roots(n_tasks, rng)
        r_q = self._roots(n_tasks, rng)
        a = self.center + self.task_std * rng.standard_normal((n_tasks, d))
        b = a + self.query_shift * rng.standard_normal((n_tasks, d))
        y_s = np.einsum("tij,tj->ti", r_s, a)[..., None]
        y_q = np.einsum("tij,tj->ti", r_q, b)[..., None]
        p = np.einsum("tki,tkj->tij", r_s, r_s)
        q = np.einsum("tki,tkj->tij", r_q, r_q)
        cast = {k: v.astype(self.dtype) for k, v in {"P": p, "a": a, "Q": q, "b": b}.items()}
        dt = self.dtype
        return Episode(r_s.astype(dt), y_s.astype(dt), r_q.astype(dt), y_q.astype(dt), cast)

    @staticmethod
    def optimum(episode: Episode, which: str = "query") -> Any:
        """The per-task minimizer: ``b_i`` of ``L_i`` (``"query"``) or ``a_i`` of ``L̂_i``.

        Returns an array ``(T, dim)`` on the episode's backend.
        """
        keys = {"query": "b", "support": "a"}
        if which not in keys:
            raise ValueError(f"which must be 'query' or 'support', got {which!r}")
        return episode.info[keys[which]]

    @staticmethod
    def adapted(theta: Any, episode: Episode, lr: float, steps: int) -> Any:
        """Closed form of ``steps`` gradient-descent steps on ``L̂_i`` from ``φ_0 = θ``.

        ``φ_K = a_i + (I − αP_i)^K (θ − a_i)``; ``theta`` is ``(dim,)`` or ``(T, dim)``.
        Cost O(T·dim³) (an eigendecomposition of each ``P_i``).
        """
        xp = _backend.module(_backend.name_of(theta, episode.info["P"]))
        p, a = episode.info["P"], episode.info["a"]
        evals, evecs = xp.linalg.eigh(p)
        factor = (1.0 - lr * evals) ** int(steps)
        diff = theta - a
        coeff = xp.einsum("tji,tj->ti", evecs, diff) * factor
        return a + xp.einsum("tij,tj->ti", evecs, coeff)

    @staticmethod
    def maml_optimum(episode: Episode, lr: float, steps: int) -> Any:
        """Minimizer ``θ*`` of the MAML objective ``(1/T) Σ_i L_i(φ_K,i(θ))`` of the episode.

        With ``J_i = (I − αP_i)^K`` and ``φ_K,i = a_i + J_i(θ − a_i)`` the objective is a
        quadratic in ``θ``; its normal equations are
        ``(Σ J_iQ_iJ_i) θ = Σ J_iQ_i(b_i − a_i + J_i a_i)``. Cost O(T·dim³).
        """
        info = episode.info
        xp = _backend.module(_backend.name_of(info["P"]))
        evals, evecs = xp.linalg.eigh(info["P"])
        jac = xp.einsum("tik,tk,tjk->tij", evecs, (1.0 - lr * evals) ** int(steps), evecs)
        jq = xp.matmul(jac, info["Q"])
        lhs = xp.sum(xp.matmul(jq, jac), axis=0)
        rhs_vec = info["b"] - info["a"] + xp.einsum("tij,tj->ti", jac, info["a"])
        rhs = xp.sum(xp.einsum("tij,tj->ti", jq, rhs_vec), axis=0)
        return xp.linalg.solve(lhs, rhs)


class FunctionFamily(TaskSampler):
    """Regression tasks ``y = f(x; p)`` from a fixed pool of task parameters ``p``.

    A-MAML's synthetic protocol (Li et al., AISTATS 2023, and its released code): the pool
    holds ``2·n_tasks`` parameter vectors drawn uniformly in :attr:`param_bounds` from
    ``default_rng(seed)``; the first ``n_tasks`` are the training tasks, the last
    ``n_tasks`` the test tasks (``split``). A sampled task is a pool entry with
    ``n_shot`` support and ``n_query`` query inputs uniform in :attr:`input_bounds`.
    With ``standardize`` (as the released code) inputs and targets are standardized with
    constants of the whole pool (inputs: the box's mean and standard deviation; targets:
    over 1000 fixed inputs of every pool function), the same for both splits.
    Cost O(T·(n_shot + n_query)·d) per episode.

    Subclasses set ``input_bounds``, ``param_bounds`` and :meth:`function`.
    """

    loss = "mse"
    input_bounds: tuple[tuple[float, float], ...] = ((-1.0, 1.0),)
    param_bounds: tuple[tuple[float, float], ...] = ()

    def __init__(self, n_shot: int = 100, n_query: int = 100, split: str = "train",
                 n_tasks: int = 100, seed: int = 1, standardize: bool = True,
                 backend: str | None = None, dtype: Any = "float64"):
        self.n_shot = check_count("n_shot", n_shot)
        self.n_query = check_count("n_query", n_query)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.n_tasks, self.seed = split, check_count("n_tasks", n_tasks), int(seed)
        self.standardize = bool(standardize)
        self.dtype = _check_dtype(dtype)
        self._set_backend(backend)
        lo, hi = np.asarray(self.param_bounds, dtype=float).T
        pool = np.random.default_rng(self.seed).uniform(lo, hi, (2 * self.n_tasks, lo.size))
        self.params = pool[: self.n_tasks] if split == "train" else pool[self.n_tasks:]
        self.x_shift, self.x_scale, self.y_shift, self.y_scale = self._scaling(pool)

    @property
    def dim(self) -> int:
        """Input dimension ``d``."""
        return len(self.input_bounds)

    def function(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        """``f(x; p)``: ``x (T, N, d)``, ``params (T, p)`` → ``(T, N, 1)`` (raw units)."""
        raise NotImplementedError

    def _uniform(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        lo, hi = np.asarray(self.input_bounds, dtype=float).T
        return rng.uniform(lo, hi, shape + (self.dim,))

    def _scaling(self, pool: np.ndarray) -> tuple[Any, Any, float, float]:
        if not self.standardize:
            return 0.0, 1.0, 0.0, 1.0
        lo, hi = np.asarray(self.input_bounds, dtype=float).T
        x = self._uniform(np.random.default_rng([self.seed, 1]), (1, 1000))
        y = self.function(np.broadcast_to(x, (pool.shape[0],) + x.shape[1:]), pool)
        return (lo + hi) / 2, (hi - lo) / np.sqrt(12.0), float(y.mean()), float(y.std())

    def _episode(self, x_s: np.ndarray, x_q: np.ndarray, index: np.ndarray) -> Episode:
        p = self.params[index]
        ys, yq = self.function(x_s, p), self.function(x_q, p)
        dt = self.dtype

        def x_(x: np.ndarray) -> np.ndarray:
            return ((x - self.x_shift) / self.x_scale).astype(dt)

        def y_(y: np.ndarray) -> np.ndarray:
            return ((y - self.y_shift) / self.y_scale).astype(dt)

        info = {"task": index, "params": p.astype(dt)}
        return Episode(x_(x_s), y_(ys), x_(x_q), y_(yq), info)

    def _sample(self, n_tasks: int, rng: np.random.Generator) -> Episode:
        index = rng.integers(0, self.n_tasks, n_tasks)
        x = self._uniform(rng, (n_tasks, self.n_shot + self.n_query))
        return self._episode(x[:, : self.n_shot], x[:, self.n_shot:], index)

    def test_grid(self, points: int = 100) -> np.ndarray:
        """The test inputs of the protocol ``(points^d, d)``: a regular grid of the box
        (``linspace`` in 1-D, a meshgrid in 2-D; raw units)."""
        axes = [np.linspace(lo, hi, check_count("points", points))
                for lo, hi in self.input_bounds]
        return np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=-1)

    def test_episode(self, rng: np.random.Generator, points: int = 100) -> Episode:
        """Every task of the split once: ``n_shot`` random support inputs, the query set
        the test grid (:meth:`test_grid`), for the fine-tuning protocol
        (:func:`bilevel.meta.finetune.finetune_curve`)."""
        check_rng(rng)
        index = np.arange(self.n_tasks)
        grid = self.test_grid(points)
        x_q = np.broadcast_to(grid, (self.n_tasks,) + grid.shape)
        episode = self._episode(self._uniform(rng, (self.n_tasks, self.n_shot)), x_q, index)
        return episode if self.backend == "numpy" else episode.to_backend(self.backend)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_shot={self.n_shot}, n_query={self.n_query}, "
                f"split={self.split!r}, n_tasks={self.n_tasks}, seed={self.seed}, "
                f"standardize={self.standardize})")


class Alpine2D(FunctionFamily):
    """A-MAML's Alpine family: ``y = Σ_d |x_d sin(x_d + π + kπ/12) + x_d/10|``.

    ``x ∈ [−10, 10]²``, ``k ~ U[−5, 5]`` (the released code draws two parameters and uses
    the first for both coordinates; so does this family). See :class:`FunctionFamily`.
    """

    input_bounds = ((-10.0, 10.0), (-10.0, 10.0))
    param_bounds = ((-5.0, 5.0),)

    def function(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        s = params[:, None, :1] * np.pi / 12
        return np.sum(np.abs(x * np.sin(x + np.pi + s) + x / 10.0), axis=-1, keepdims=True)


class CosMixture(FunctionFamily):
    """A-MAML's cosine mixture: ``y = −c·cos(fπx + φ) − x²`` on ``x ∈ [−1, 1]``.

    ``c ~ U[0.1, 1]``, ``φ ~ U[0.5, 2]``, ``f ~ U[3, 6]``. See :class:`FunctionFamily`.
    """

    input_bounds = ((-1.0, 1.0),)
    param_bounds = ((0.1, 1.0), (0.5, 2.0), (3.0, 6.0))

    def function(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        c, phase, freq = (params[:, None, i:i + 1] for i in range(3))
        term = np.cos(freq * np.pi * x + phase) * c + x * x
        return -np.sum(term, axis=-1, keepdims=True)


class CosMixture2D(CosMixture):
    """:class:`CosMixture` summed over two coordinates: ``y = −Σ_d (c·cos(fπx_d + φ) +
    x_d²)`` on ``[−1, 1]²`` (the same parameters)."""

    input_bounds = ((-1.0, 1.0), (-1.0, 1.0))
