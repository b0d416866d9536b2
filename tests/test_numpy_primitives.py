"""bnp primitives on NumPy: check_grads (fwd + rev, order 2) and parity with autograd.numpy."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_jvp
from autograd.test_util import check_grads
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import bilevel.numpy as bnp

MODES = ["fwd", "rev"]
seeds = st.integers(0, 2**31 - 1)
shapes = array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def rand(seed, shape, offset=0):
    return np.random.default_rng(seed + offset).standard_normal(shape)


def positive(x):
    return np.abs(x) + 0.5


def away_from_zero(x):
    return x + np.where(x >= 0, 0.2, -0.2)


def identity(x):
    return x


UNARY = [
    ("exp", bnp.exp, anp.exp, identity),
    ("log", bnp.log, anp.log, positive),
    ("log1p", bnp.log1p, anp.log1p, positive),
    ("expm1", bnp.expm1, anp.expm1, identity),
    ("sqrt", bnp.sqrt, anp.sqrt, positive),
    ("tanh", bnp.tanh, anp.tanh, identity),
    ("sigmoid", bnp.sigmoid, lambda x: 1 / (1 + anp.exp(-x)), identity),
    ("softplus", bnp.softplus, lambda x: anp.logaddexp(0.0, x), identity),
    ("sin", bnp.sin, anp.sin, identity),
    ("cos", bnp.cos, anp.cos, identity),
    ("abs", bnp.abs, anp.abs, away_from_zero),
    ("negative", bnp.negative, anp.negative, identity),
    ("square", bnp.square, anp.square, identity),
]

BINARY = [
    ("add", bnp.add, anp.add, identity),
    ("subtract", bnp.subtract, anp.subtract, identity),
    ("multiply", bnp.multiply, anp.multiply, identity),
    ("divide", bnp.divide, anp.divide, away_from_zero),
    ("power", bnp.power, anp.power, positive),
    ("maximum", bnp.maximum, anp.maximum, identity),
    ("minimum", bnp.minimum, anp.minimum, identity),
]


def assert_parity(f_bnp, f_anp, *args, argnum=0):
    np.testing.assert_allclose(f_bnp(*args), f_anp(*args), rtol=1e-12, atol=1e-14)
    gb = grad(lambda *a: anp.sum(anp.sin(f_bnp(*a))), argnum)(*args)
    ga = grad(lambda *a: anp.sum(anp.sin(f_anp(*a))), argnum)(*args)
    np.testing.assert_allclose(gb, ga, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,f,ref,domain", UNARY, ids=[u[0] for u in UNARY])
@given(shape=shapes, seed=seeds)
def test_unary(name, f, ref, domain, shape, seed):
    x = domain(rand(seed, shape))
    check_grads(f, modes=MODES, order=2)(x)
    assert_parity(f, ref, x)


def test_sign_has_zero_derivative():
    x = np.array([-1.5, 0.3, 2.0])
    np.testing.assert_array_equal(bnp.sign(x), np.sign(x))
    np.testing.assert_array_equal(grad(lambda x: bnp.sum(bnp.sign(x)))(x), np.zeros(3))
    assert np.all(make_jvp(bnp.sign)(x)(np.ones(3))[1] == 0)


@pytest.mark.parametrize("name,f,ref,domain", BINARY, ids=[b[0] for b in BINARY])
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), seed=seeds)
def test_binary_broadcasting(name, f, ref, domain, shapes, seed):
    xs, ys = shapes.input_shapes
    x, y = rand(seed, xs), rand(seed, ys, 1)
    if name == "power":
        x = positive(x)
    else:
        y = domain(y)
    check_grads(f, modes=MODES, order=2, argnum=(0, 1))(x, y)
    for argnum in (0, 1):
        assert_parity(f, ref, x, y, argnum=argnum)


@pytest.mark.parametrize(
    "name,f,ref",
    [
        ("add", bnp.add, anp.add),
        ("multiply", bnp.multiply, anp.multiply),
        ("power", bnp.power, anp.power),
        ("divide", bnp.divide, anp.divide),
    ],
)
def test_binary_with_python_scalars(name, f, ref):
    x = positive(rand(0, (3, 2)))
    for args in [(x, 2.0), (1.5, x), (x, np.float64(3.0))]:
        np.testing.assert_allclose(f(*args), ref(*args))
        a, b = args
        check_grads(lambda v, a=a, b=b: f(v, b) if a is x else f(a, v), modes=MODES, order=2)(x)


@given(seed=seeds, shape=shapes)
def test_where_and_clip(seed, shape):
    x, y = rand(seed, shape), rand(seed, shape, 1)
    c = rand(seed, shape, 2) > 0
    check_grads(lambda a, b: bnp.where(c, a, b), modes=MODES, order=2, argnum=(0, 1))(x, y)
    assert_parity(lambda a: bnp.where(c, a, y), lambda a: anp.where(c, a, y), x)
    check_grads(lambda a: bnp.where(c, a, 0.0), modes=MODES, order=2)(x)
    z = x + np.where(np.abs(x - 0.5) < 0.05, 0.1, 0.0) + np.where(np.abs(x + 0.5) < 0.05, 0.1, 0.0)
    check_grads(lambda a: bnp.clip(a, -0.5, 0.5), modes=MODES, order=2)(z)
    assert_parity(lambda a: bnp.clip(a, -0.5, 0.5), lambda a: anp.clip(a, -0.5, 0.5), z)


AXES = [None, 0, -1, (0, 1)]


@pytest.mark.parametrize(
    "name,f,ref",
    [
        ("sum", bnp.sum, anp.sum),
        ("mean", bnp.mean, anp.mean),
        ("max", bnp.max, anp.max),
        ("logsumexp", bnp.logsumexp, None),
        ("var", bnp.var, anp.var),
    ],
)
@given(
    seed=seeds,
    shape=array_shapes(min_dims=2, max_dims=3, max_side=4),
    axis=st.sampled_from(AXES),
    keepdims=st.booleans(),
)
def test_reductions(name, f, ref, seed, shape, axis, keepdims):
    x = rand(seed, shape)
    fun = lambda a: f(a, axis=axis, keepdims=keepdims)  # noqa: E731
    check_grads(fun, modes=MODES, order=2)(x)
    if ref is None:
        from scipy.special import logsumexp

        np.testing.assert_allclose(fun(x), logsumexp(x, axis=axis, keepdims=keepdims), rtol=1e-12)
    else:
        assert_parity(fun, lambda a: ref(a, axis=axis, keepdims=keepdims), x)


def test_max_ties_share_the_gradient():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    np.testing.assert_allclose(
        grad(lambda a: bnp.sum(bnp.max(a, axis=1)))(x), [[0, 0.5, 0.5], [1, 0, 0]]
    )
    np.testing.assert_allclose(bnp.min(x, axis=1), [1.0, -1.0])


def test_logsumexp_is_stable_and_var_ddof():
    x = np.array([1000.0, 1000.0])
    np.testing.assert_allclose(bnp.logsumexp(x), 1000.0 + np.log(2.0))
    np.testing.assert_allclose(grad(bnp.logsumexp)(x), [0.5, 0.5])
    y = rand(3, (5,))
    np.testing.assert_allclose(bnp.var(y, ddof=1), np.var(y, ddof=1))
    with pytest.raises(ValueError, match="ddof"):
        bnp.var(y, ddof=5)


MATMUL_SHAPES = [
    ((3,), (3,)),
    ((2, 3), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3, 4)),
    ((5, 2, 3), (3, 4)),
    ((2, 3), (5, 3, 4)),
    ((5, 1, 2, 3), (4, 3, 2)),
    ((4,), (2, 4, 3)),
    ((2, 2, 4), (4,)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul(sa, sb):
    a, b = rand(1, sa), rand(2, sb)
    check_grads(bnp.matmul, modes=MODES, order=2, argnum=(0, 1))(a, b)
    for argnum in (0, 1):
        assert_parity(bnp.matmul, anp.matmul, a, b, argnum=argnum)


def test_dot_and_operators_agree():
    a, b = rand(1, (3, 4)), rand(2, (4,))
    np.testing.assert_allclose(bnp.dot(a, b), a @ b)
    np.testing.assert_allclose(bnp.dot(2.0, b), 2.0 * b)
    with pytest.raises(ValueError, match="at most 2"):
        bnp.dot(rand(0, (2, 2, 2)), a)


EINSUMS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 4)]),
    ("...ij,jk->...ik", [(2, 5, 2, 3), (3, 4)]),
    ("ij->j", [(3, 4)]),
    ("i,i->", [(4,), (4,)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij,kj", [(3, 4), (2, 4)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("ij->ijk" if False else "i,j->ij", [(3,), (2,)]),
]


@pytest.mark.parametrize("spec,shapes", EINSUMS)
def test_einsum(spec, shapes):
    ops = [rand(k, s) for k, s in enumerate(shapes)]
    argnums = tuple(range(len(ops)))
    fun = lambda *o: bnp.einsum(spec, *o)  # noqa: E731
    check_grads(fun, modes=MODES, order=2, argnum=argnums)(*ops)
    for k in argnums:
        assert_parity(fun, lambda *o: anp.einsum(spec, *o), *ops, argnum=k)


def test_einsum_rejects_bad_subscripts():
    with pytest.raises(ValueError, match="repeated index"):
        bnp.einsum("ii->i", rand(0, (3, 3)))
    with pytest.raises(ValueError, match="operands"):
        bnp.einsum("ij,jk->ik", rand(0, (3, 3)))


@given(seed=seeds)
def test_shape_functions(seed):
    x = rand(seed, (2, 3, 4))
    cases = [
        (lambda a: bnp.reshape(a, (4, -1)), lambda a: anp.reshape(a, (4, -1))),
        (
            lambda a: bnp.broadcast_to(a[:, :1], (5, 2, 3, 4)),
            lambda a: a[:, :1] + np.zeros((5, 2, 3, 4)),
        ),
        (lambda a: bnp.expand_dims(a, 1), lambda a: anp.expand_dims(a, 1)),
        (lambda a: bnp.squeeze(a[:1], 0), lambda a: anp.squeeze(a[:1], 0)),
        (lambda a: bnp.transpose(a), lambda a: anp.transpose(a)),
        (lambda a: bnp.transpose(a, (1, 2, 0)), lambda a: anp.transpose(a, (1, 2, 0))),
        (lambda a: bnp.swapaxes(a, 0, 2), lambda a: anp.swapaxes(a, 0, 2)),
        (lambda a: bnp.moveaxis(a, 0, -1), lambda a: anp.moveaxis(a, 0, -1)),
        (lambda a: bnp.ravel(a), lambda a: anp.ravel(a)),
        (
            lambda a: bnp.concatenate([a, 2 * a[:, :1]], axis=1),
            lambda a: anp.concatenate([a, 2 * a[:, :1]], axis=1),
        ),
        (
            lambda a: bnp.stack([a, anp.sin(a)], axis=-1),
            lambda a: anp.stack([a, anp.sin(a)], axis=-1),
        ),
    ]
    for f, ref in cases:
        check_grads(f, modes=MODES, order=2)(x)
        assert_parity(f, ref, x)


@given(seed=seeds)
def test_indexing(seed):
    x = rand(seed, (4, 5))
    ind = np.random.default_rng(seed).integers(0, 4, size=6)
    cols = np.random.default_rng(seed + 1).integers(0, 5, size=(4, 3))
    cases = [
        (lambda a: bnp.getitem(a, (slice(1, None), slice(None, None, 2))), lambda a: a[1:, ::2]),
        (lambda a: bnp.getitem(a, (Ellipsis, None, 2)), lambda a: a[..., None, 2]),
        (lambda a: bnp.getitem(a, ind), lambda a: a[ind]),
        (lambda a: bnp.getitem(a, (ind, ind % 5)), lambda a: a[ind, ind % 5]),
        (lambda a: bnp.take(a, ind, axis=0), lambda a: a[ind]),
        (lambda a: bnp.take(a, cols, axis=1), lambda a: a[:, cols]),
        (lambda a: bnp.take(a, ind), lambda a: anp.ravel(a)[ind]),
        (lambda a: bnp.take_along_axis(a, cols, axis=1), lambda a: a[np.arange(4)[:, None], cols]),
    ]
    for f, ref in cases:
        check_grads(f, modes=MODES, order=2)(x)
        assert_parity(f, ref, x)


def test_repeated_indices_accumulate():
    x = np.arange(3.0)
    g = grad(lambda a: bnp.sum(bnp.getitem(a, np.array([0, 0, 2, 0]))))(x)
    np.testing.assert_array_equal(g, [3.0, 0.0, 1.0])


@given(seed=seeds, shape=array_shapes(min_dims=1, max_dims=3, max_side=4))
def test_softmax_family(seed, shape):
    x = rand(seed, shape) * 3
    for axis in (-1, 0):
        check_grads(lambda a, axis=axis: bnp.log_softmax(a, axis=axis), modes=MODES, order=2)(x)
        check_grads(lambda a, axis=axis: bnp.softmax(a, axis=axis), modes=MODES, order=2)(x)
        np.testing.assert_allclose(bnp.sum(bnp.softmax(x, axis=axis), axis=axis), 1.0)
    logits = x.reshape(-1, shape[-1])
    labels = np.random.default_rng(seed).integers(0, shape[-1], size=logits.shape[0])
    ref = -np.mean(bnp.log_softmax(logits)[np.arange(len(labels)), labels])
    np.testing.assert_allclose(bnp.softmax_cross_entropy(logits, labels), ref, rtol=1e-12)
    check_grads(lambda a: bnp.softmax_cross_entropy(a, labels), modes=MODES, order=2)(logits)
    p = np.exp(logits - np.max(logits, 1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(shape[-1])[labels]
    np.testing.assert_allclose(
        grad(bnp.softmax_cross_entropy)(logits, labels),
        (p - onehot) / len(labels),
        rtol=1e-10,
        atol=1e-14,
    )


def test_cross_entropy_arguments():
    logits = rand(0, (4, 3))
    with pytest.raises(TypeError, match="labels must be an integer"):
        bnp.softmax_cross_entropy(logits, np.zeros(4))
    with pytest.raises(ValueError, match="labels must have shape"):
        bnp.softmax_cross_entropy(logits, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="reduction"):
        bnp.softmax_cross_entropy(logits, np.zeros(4, dtype=int), reduction="avg")
    per = bnp.softmax_cross_entropy(logits, np.zeros(4, dtype=int), reduction="none")
    np.testing.assert_allclose(
        bnp.sum(per), bnp.softmax_cross_entropy(logits, np.zeros(4, dtype=int), reduction="sum")
    )


def test_mixing_autograd_numpy_and_bnp_and_hvp():
    w = rand(5, (3, 3))

    def f(a):
        return anp.sum(anp.tanh(bnp.matmul(a, w)) ** 2) + bnp.sum(bnp.exp(anp.sin(a)))

    x = rand(6, (2, 3))
    check_grads(f, modes=MODES, order=2)(x)
    v = rand(7, (2, 3))
    hvp_fwd_over_rev = make_jvp(grad(f))(x)(v)[1]
    hvp_rev_over_rev = grad(lambda a: anp.sum(grad(f)(a) * v))(x)
    np.testing.assert_allclose(hvp_fwd_over_rev, hvp_rev_over_rev, rtol=1e-10)


def test_float32_is_preserved():
    x = rand(0, (3, 4)).astype(np.float32)
    outs = [
        bnp.exp(x),
        x * 2.0,
        bnp.multiply(x, np.float64(2.0)) if False else bnp.multiply(x, 2.0),
        bnp.sigmoid(x),
        bnp.softplus(x),
        bnp.logsumexp(x, axis=1),
        bnp.var(x),
        bnp.maximum(x, 0.0),
        bnp.clip(x, -1, 1),
        bnp.matmul(x, x.T),
        bnp.softmax(x),
    ]
    assert all(np.asarray(o).dtype == np.float32 for o in outs)
    g = grad(lambda a: bnp.sum(bnp.tanh(a) * 2.0) + bnp.softmax_cross_entropy(a, np.zeros(3, int)))(
        x
    )
    assert g.dtype == np.float32


def test_creation_and_queries():
    x = rand(0, (2, 3))
    assert (
        bnp.zeros_like(x).shape == (2, 3)
        and bnp.ones_like(x, dtype=bnp.float32).dtype == np.float32
    )
    np.testing.assert_array_equal(bnp.full_like(x, 2.0), np.full((2, 3), 2.0))
    assert bnp.zeros(3).dtype == np.float64 and bnp.ones((2, 2), like=x).shape == (2, 2)
    np.testing.assert_array_equal(bnp.eye(2), np.eye(2))
    np.testing.assert_allclose(bnp.linspace(0, 1, 5), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(bnp.arange(4), np.arange(4))
    np.testing.assert_array_equal(bnp.full(2, 3.0), [3.0, 3.0])
    assert bnp.shape(x) == (2, 3) and bnp.ndim(x) == 2 and bnp.size(x) == 6
    assert bool(bnp.all(bnp.isfinite(x))) and not bool(bnp.any(bnp.isfinite(x) == 0))
    assert int(bnp.argmax(np.array([1.0, 5.0, 2.0]))) == 1
    assert bnp.asarray([1.0, 2.0], dtype=bnp.float32).dtype == np.float32
    check_grads(lambda a: bnp.astype(a, bnp.float64) * 2.0, modes=MODES, order=2)(x)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="axis 3 is out of bounds"):
        bnp.sum(rand(0, (2, 2)), axis=3) if False else bnp.mean(rand(0, (2, 2)), axis=3)
    with pytest.raises(ValueError, match="does not have length 1"):
        bnp.squeeze(rand(0, (2, 2)), 0)
    with pytest.raises(ValueError, match="non-empty"):
        bnp.concatenate([])
    with pytest.raises(ValueError, match="one shape"):
        bnp.stack([rand(0, (2,)), rand(0, (3,))])
    with pytest.raises(ValueError, match="indices must have"):
        bnp.take_along_axis(rand(0, (2, 2)), np.zeros(2, int), axis=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maximum_minimum_ties_share_the_gradient_with_broadcasting(dtype):
    x = np.array([[0.0, -1.0, 2.0], [0.0, 3.0, -2.0]], dtype=dtype)
    y = np.array([0.0, 3.0, 1.0], dtype=dtype)  # ties at (0, 0), (1, 0), (1, 1)
    gx, gy = grad(lambda a, b: bnp.sum(bnp.maximum(a, b)), (0, 1))(x, y)
    np.testing.assert_array_equal(gx, [[0.5, 0, 1], [0.5, 0.5, 0]])
    np.testing.assert_array_equal(gy, [1.0, 1.5, 1.0])
    assert gx.dtype == dtype and gy.dtype == dtype
    gx_min = grad(lambda a: bnp.sum(bnp.minimum(a, 0.0)))(x)
    np.testing.assert_array_equal(gx_min, [[0.5, 1, 0], [0.5, 0, 1]])
    # forward mode: the tangent of max(x, 0) is t · share
    t = np.ones_like(x)
    np.testing.assert_array_equal(
        make_jvp(lambda a: bnp.maximum(a, 0.0))(x)(t)[1], [[0.5, 0, 1], [0.5, 1, 0]]
    )


def test_definitions_import_no_rules_and_no_module_is_in_a_cycle():
    """Primitives are defined first and the rules registered last (as autograd.numpy does)."""
    import ast
    from pathlib import Path

    root = Path(bnp.__file__).parent
    imports = {}
    for path in root.rglob("*.py"):
        name = ".".join(("bilevel", "numpy", *path.relative_to(root).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        imports[name] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                imports[name].update(t for t in targets if t.startswith("bilevel.numpy."))
            if isinstance(node, ast.ImportFrom) and node.module == "autograd.extend":
                if name.count(".") == 2 and name != "bilevel.numpy.boxes":
                    assert {"defvjp", "defjvp"}.isdisjoint(a.name for a in node.names), name
    imports = {m: {t for t in ts if t in imports and t != m} for m, ts in imports.items()}
    for name, targets in imports.items():
        if not name.startswith("bilevel.numpy.rules") and name != "bilevel.numpy":
            assert not any(t.startswith("bilevel.numpy.rules") for t in targets), name

    def reaches(a, b, seen):
        return any(t == b or (t not in seen and reaches(t, b, seen | {t}))
                   for t in imports.get(a, ()))

    assert [m for m in imports if reaches(m, m, {m})] == []
