"""Shared test configuration: hypothesis profiles and the CuPy marker."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    from bilevel import backend

    if backend.available("cupy"):
        return
    skip = pytest.mark.skip(reason="CuPy with a working GPU is not available on this machine")
    for item in items:
        if "cupy" in item.keywords:
            item.add_marker(skip)
