"""Shared test configuration: hypothesis profiles and the CuPy marker."""

import pytest

from bilevel.testing import register_profiles

# "ci" by default; HYPOTHESIS_PROFILE=thorough (or BILEVEL_HYPOTHESIS_PROFILE) for many examples
register_profiles()


def pytest_collection_modifyitems(config, items):
    from bilevel import backend

    if backend.available("cupy"):
        return
    skip = pytest.mark.skip(reason="CuPy with a working GPU is not available on this machine")
    for item in items:
        if "cupy" in item.keywords:
            item.add_marker(skip)
