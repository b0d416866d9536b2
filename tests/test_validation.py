"""bilevel.validation (checks run once in frozen dataclasses) and bilevel.registry."""

import importlib
import pickle
from dataclasses import FrozenInstanceError, dataclass, replace

import numpy as np
import pytest

from bilevel import registry
from bilevel.validation import (
    Validated,
    integer,
    nonnegative,
    number,
    one_of,
    option,
    optional,
    positive,
)


@dataclass(frozen=True)
class Options(Validated):
    rate: float = option(0.5, check=number(0.0, maximum=1.0, below=True))
    steps: int = option(3, check=integer(1))
    tol: float | None = option(None, check=optional(positive))
    mode: str = option("fast", check=one_of(("fast", "exact")))
    shift: float = option(0.0, check=nonnegative)


def test_checks_normalise_once_at_construction():
    o = Options(rate=np.float32(0.25), steps=np.int64(4), tol=1, mode="EXACT")
    assert (o.rate, o.steps, o.tol, o.mode) == (0.25, 4, 1.0, "exact")
    assert type(o.steps) is int and type(o.tol) is float
    with pytest.raises(FrozenInstanceError):
        o.rate = 0.1
    assert replace(o, steps=7).steps == 7
    assert pickle.loads(pickle.dumps(o)) == o


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=1.0), r"rate must be a finite number >= 0 and < 1, got 1.0"),
        (dict(rate=float("nan")), r"rate must be a finite number"),
        (dict(rate=True), r"rate must be a finite number"),
        (dict(steps=0), r"steps must be an integer >= 1, got 0"),
        (dict(steps=2.5), r"steps must be an integer >= 1, got 2.5"),
        (dict(tol=0.0), r"tol must be a finite number > 0, got 0.0"),
        (dict(mode="slow"), r"mode must be one of 'fast', 'exact'; got 'slow'"),
        (dict(shift=-1), r"shift must be a finite number >= 0, got -1"),
    ],
)
def test_errors_name_the_argument_and_the_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Options(**kwargs)
    with pytest.raises(ValueError, match=match):  # the check also runs on replace()
        replace(Options(), **kwargs)


def test_registry_lookup_in_any_spelling():
    @registry.register("test-kind", "alias")
    class Thing:
        name = "some-thing"

    assert registry.lookup("test-kind", "Some_Thing") is Thing
    assert registry.lookup("test-kind", "ALIAS") is Thing
    assert registry.names("test-kind") == ["some-thing"]
    with pytest.raises(ValueError, match="unknown test-kind 'other'; choose one of: some-thing"):
        registry.lookup("test-kind", "other")
    with pytest.raises(TypeError, match="needs a string attribute 'name'"):
        registry.register("test-kind")(type("Nameless", (), {}))


def test_core_components_are_registered():
    importlib.import_module("bilevel.meta")  # registers the algorithms

    assert {"reverse", "forward", "implicit", "adjoint", "historyless", "first-order"} <= set(
        registry.names("method"))
    assert {"cg", "neumann", "direct"} <= set(registry.names("solver"))
    assert {"gradient-descent", "momentum", "gradient-flow"} <= set(registry.names("dynamics"))
    assert {"adam", "sgd"} <= set(registry.names("optimizer"))
    assert registry.lookup("algorithm", "A-MAML").__name__ == "AMAML"
