"""Hypothesis settings profiles shared by the project's tests and by users' test suites.

``register_profiles()`` registers ``"ci"`` (few examples, deterministic: fast and
reproducible in continuous integration) and ``"thorough"`` (many random examples, for a
nightly run or before a release), then loads the profile named by the environment
variable ``BILEVEL_HYPOTHESIS_PROFILE`` (or ``HYPOTHESIS_PROFILE``), default ``"ci"``.
Call it once from ``conftest.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["ENV_VARIABLES", "PROFILES", "register_profiles"]

#: Environment variables read, in order, for the profile name.
ENV_VARIABLES = ("BILEVEL_HYPOTHESIS_PROFILE", "HYPOTHESIS_PROFILE")

#: The profiles and their example counts.
PROFILES = {"ci": 12, "thorough": 300}


def register_profiles(default: str = "ci", load: bool = True) -> str:
    """Register the ``"ci"`` and ``"thorough"`` profiles and load the selected one.

    ``"ci"``: 12 examples, derandomized (the same examples every run), no deadline.
    ``"thorough"``: 300 random examples, no deadline. Both suppress the ``too_slow`` and
    ``data_too_large`` health checks (generated problems are built with linear algebra,
    not drawn float by float).

    Parameters
    ----------
    default : str
        Profile used when no environment variable is set.
    load : bool
        Load the selected profile (otherwise only register).

    Returns
    -------
    str
        The name of the selected profile.

    Raises
    ------
    ValueError
        When the selected name is neither of these profiles nor one registered earlier.
    """
    common = dict(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile("ci", max_examples=PROFILES["ci"], derandomize=True, **common)
    settings.register_profile("thorough", max_examples=PROFILES["thorough"], **common)
    name = next((os.environ[v] for v in ENV_VARIABLES if os.environ.get(v)), default)
    try:
        settings.get_profile(name)  # no side effect, unlike a failed load_profile
    except Exception as err:  # hypothesis raises InvalidArgument
        source = next((v for v in ENV_VARIABLES if os.environ.get(v)), "the default")
        raise ValueError(
            f"unknown hypothesis profile {name!r} (from {source}); use one of "
            f"{sorted(PROFILES)} or register it before calling register_profiles()"
        ) from err
    if load:
        settings.load_profile(name)
    return name
