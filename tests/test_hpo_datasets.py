"""The bundled-data loaders of the HPO examples: splits, standardization, corruption."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from bilevel.hpo import datasets  # noqa: E402


def test_split_indices_partition_and_determinism():
    tr, va, te = datasets.split_indices(100, seed=3, fractions=(0.5, 0.3))
    assert (len(tr), len(va), len(te)) == (50, 30, 20)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(100))
    again = datasets.split_indices(100, seed=3, fractions=(0.5, 0.3))
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    with pytest.raises(ValueError, match="fractions"):
        datasets.split_indices(10, 0, (0.7, 0.4))


def test_diabetes_is_standardized_on_training_rows():
    d = datasets.diabetes(seed=0)
    np.testing.assert_allclose(d["X"].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(d["X"].std(0), 1, rtol=1e-12)
    assert abs(d["y"].mean()) < 1e-12 and abs(d["y"].std() - 1) < 1e-12
    assert len(d["y"]) + len(d["yv"]) + len(d["yt"]) == 442


def test_digits_corruption_changes_exactly_the_masked_labels():
    d = datasets.digits_corrupted(seed=1, n_train=500, n_val=300, noise=0.4)
    changed = d["y"] != d["y_clean"]
    assert np.array_equal(changed, d["corrupt"])
    assert 0.3 < d["corrupt"].mean() < 0.5
    assert d["X"].shape == (500, 64) and d["Xv"].shape == (300, 64)


def test_time_to_target_counts_hypergradients_until_the_first_hit():
    hist = {"value": np.array([3.0, 2.0, 1.0, 0.5]), "time": np.array([1.0, 1.0, 2.0, 4.0])}
    assert datasets.time_to_target(hist, 1.0) == (4.0, 3)
    t, k = datasets.time_to_target(hist, 0.1)
    assert np.isnan(t) and k == -1
