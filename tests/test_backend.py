"""Tests of bilevel.backend: namespaces, device mixing, creation, tree moves, CuPy probing."""

from collections import namedtuple

import array_api_compat
import array_api_strict as xps
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad

from bilevel import backend
from bilevel.backend import BackendError

Pair = namedtuple("Pair", ["a", "b"])


def test_namespace_of_numpy_arrays_and_scalars():
    xp = backend.namespace(np.ones(2), 3.0, None, np.float64(1.0))
    assert array_api_compat.is_numpy_namespace(xp)
    assert array_api_compat.is_numpy_namespace(backend.namespace())
    assert backend.name_of(np.ones(3)) == "numpy"


def test_namespace_of_array_api_strict_arrays():
    a = xps.asarray([1.0, 2.0])
    assert backend.namespace(a, a) is xps
    assert backend.name_of(a) == "array_api_strict"


def test_namespace_unwraps_autograd_boxes():
    seen = []

    def fn(x):
        seen.append(backend.namespace(x, np.ones(2)))
        assert backend.is_array(x)
        return anp.sum(x**2)

    g = grad(fn)(np.array([1.0, -2.0]))
    np.testing.assert_allclose(g, [2.0, -4.0])
    assert array_api_compat.is_numpy_namespace(seen[0])


def test_mixing_devices_names_each_argument_and_device():
    a = xps.asarray([1.0, 2.0])
    b = xps.asarray([1.0, 2.0], device=xps.Device("device1"))
    assert str(a.device) != str(b.device)
    with pytest.raises(TypeError) as info:
        backend.namespace(a, b, names=("w", "lam"))
    msg = str(info.value)
    assert "w is an array_api_strict array on device" in msg
    assert "lam is an array_api_strict array on device" in msg
    assert "device1" in msg
    assert "to_backend" in msg


def test_mixing_libraries_names_each_argument():
    with pytest.raises(TypeError) as info:
        backend.namespace(np.ones(2), xps.asarray([1.0]), names=("w", "lam"))
    msg = str(info.value)
    assert "w is a numpy array on the CPU" in msg
    assert "lam is an array_api_strict array" in msg


def test_mixing_without_names_uses_positions():
    with pytest.raises(TypeError, match="argument 0 .*argument 1"):
        backend.namespace(np.ones(2), xps.asarray([1.0]))


def test_is_array():
    assert backend.is_array(np.ones(2))
    assert backend.is_array(xps.asarray([1.0]))
    assert not backend.is_array([1.0, 2.0])
    assert not backend.is_array(1.0)
    assert not backend.is_array(None)


def test_current_and_using_restore_the_previous_backend():
    assert backend.current() == "numpy"
    with backend.using("numpy") as mod:
        assert mod is np
        assert backend.current() == "numpy"
    assert backend.current() == "numpy"


def test_using_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        with backend.using("torch"):
            pass
    assert backend.current() == "numpy"


def test_asarray_dtype_and_default_backend():
    x = backend.asarray([1, 2, 3], dtype=np.float64)
    assert type(x) is np.ndarray and x.dtype == np.float64
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])
    y = np.arange(4.0)
    assert backend.asarray(y) is y  # no copy on the same backend


def test_asarray_unboxes_autograd_values():
    out = []

    def fn(x):
        out.append(backend.asarray(x))
        return anp.sum(x)

    grad(fn)(np.ones(3))
    assert type(out[0]) is np.ndarray


def test_to_numpy_on_nested_trees_keeps_structure_and_other_leaves():
    tree = {
        "layer": [xps.asarray([1.0, 2.0]), (xps.asarray([[3.0]]), "tag")],
        "pair": Pair(a=xps.asarray([4.0]), b=5),
        "none": None,
    }
    out = backend.to_numpy(tree)
    assert set(out) == {"layer", "pair", "none"}
    assert type(out["layer"]) is list and type(out["layer"][1]) is tuple
    assert isinstance(out["pair"], Pair)
    np.testing.assert_array_equal(out["layer"][0], [1.0, 2.0])
    np.testing.assert_array_equal(out["layer"][1][0], [[3.0]])
    assert type(out["layer"][0]) is np.ndarray
    assert out["layer"][1][1] == "tag" and out["pair"].b == 5 and out["none"] is None
    np.testing.assert_array_equal(out["pair"].a, [4.0])


def test_to_backend_numpy_is_identity_on_numpy_leaves():
    a = np.arange(3.0)
    out = backend.to_backend({"a": a}, "numpy")
    assert out["a"] is a


def test_to_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown backend"):
        backend.to_backend({"a": np.ones(1)}, "jax")


@pytest.mark.skipif(backend.available("cupy"), reason="checks the behaviour without a GPU")
def test_cupy_unavailable_is_reported_with_install_hint():
    assert backend.available("cupy") is False
    assert backend.available("numpy") is True
    with pytest.raises(BackendError) as info:
        backend.module("cupy")
    msg = str(info.value)
    assert "bilevel[gpu]" in msg and "cupy-cuda12x" in msg and 'backend="numpy"' in msg
    with pytest.raises(BackendError):
        with backend.using("cupy"):
            pass
    with pytest.raises(BackendError):
        backend.to_backend([np.ones(2)], "cupy")
    assert backend.current() == "numpy"


def test_module_numpy_and_unknown():
    assert backend.module("numpy") is np
    assert backend.module() is np
    with pytest.raises(ValueError, match="choose one of"):
        backend.module("tensorflow")


@pytest.mark.cupy
def test_cupy_round_trip_and_mixing_error():
    import cupy

    tree = {"w": np.arange(3.0), "rest": [np.ones((2, 2)), "x"]}
    on_gpu = backend.to_backend(tree, "cupy")
    assert isinstance(on_gpu["w"], cupy.ndarray)
    assert backend.name_of(on_gpu["w"]) == "cupy"
    back = backend.to_numpy(on_gpu)
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["rest"][0], tree["rest"][0])
    assert back["rest"][1] == "x"
    with pytest.raises(TypeError, match="w is a cupy array on GPU .*lam is a numpy array"):
        backend.namespace(on_gpu["w"], np.ones(2), names=("w", "lam"))
    with backend.using("cupy") as mod:
        assert mod is cupy
        assert isinstance(backend.asarray([1.0]), cupy.ndarray)


def test_keep_heap_padding():
    """glibc's heap padding is set where glibc is the C library; bad sizes are refused."""
    import sys

    import bilevel

    applied = bilevel.keep_heap_padding(1 << 20)
    assert isinstance(applied, bool)
    if not sys.platform.startswith("linux"):
        assert applied is False
    with pytest.raises(ValueError, match="pad must be"):
        bilevel.keep_heap_padding(-1)
