"""Task samplers: episode shapes, closed forms of the quadratic family, few-shot splits and
the Omniglot loader on the shared minimal archives."""

import io
import os
import zipfile
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bilevel import backend
from bilevel.meta.models import QuadraticModel
from bilevel.meta.omniglot import ENV_VAR, load_omniglot
from bilevel.meta.tasks import (
    Episode,
    FewShotDataset,
    Omniglot,
    QuadraticTasks,
    Sinusoid,
    partition,
)

OMNIGLOT = Path(os.environ.get("BILEVEL_OMNIGLOT") or
                Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot")
needs_omniglot = pytest.mark.skipif(
    not any(OMNIGLOT.glob("*.zip")), reason=f"Omniglot archives not found in {OMNIGLOT}"
)


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------- sinusoid


def test_sinusoid_shapes_ranges_and_targets():
    s = Sinusoid(n_shot=7, n_query=9)
    e = s.sample(6, rng())
    assert e.x_support.shape == (6, 7, 1) and e.y_support.shape == (6, 7, 1)
    assert e.x_query.shape == (6, 9, 1) and e.y_query.shape == (6, 9, 1)
    assert e.x_support.dtype == np.float64 and s.loss == "mse"
    amp, ph = e.info["amplitude"], e.info["phase"]
    assert np.all((amp >= 0.1) & (amp <= 5.0)) and np.all((ph >= 0) & (ph <= np.pi))
    for x, y in ((e.x_support, e.y_support), (e.x_query, e.y_query)):
        assert np.all(np.abs(x) <= 5.0)
        np.testing.assert_array_equal(y, amp[:, None, None] * np.sin(x - ph[:, None, None]))
        np.testing.assert_array_equal(y, s.function(x, amp[:, None, None], ph[:, None, None]))


def test_sinusoid_deterministic_by_rng_state_and_noise():
    s = Sinusoid(noise=0.1)
    a, b = s.sample(3, rng(5)), s.sample(3, rng(5))
    np.testing.assert_array_equal(a.x_query, b.x_query)
    np.testing.assert_array_equal(a.y_support, b.y_support)
    clean = a.info["amplitude"][:, None, None] * np.sin(
        a.x_support - a.info["phase"][:, None, None]
    )
    assert 0.01 < np.std(a.y_support - clean) < 0.3
    assert not np.array_equal(s.sample(3, rng(6)).x_support, a.x_support)


def test_sampler_argument_errors():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        Sinusoid().sample(2, 0)
    with pytest.raises(ValueError, match="n_tasks"):
        Sinusoid().sample(0, rng())
    with pytest.raises(ValueError, match="n_shot"):
        Sinusoid(n_shot=0)
    with pytest.raises(ValueError, match="amplitude"):
        Sinusoid(amplitude=(3, 1))
    with pytest.raises(ValueError, match="backend"):
        Sinusoid(backend="torch")
    with pytest.raises(ValueError, match="curvature"):
        QuadraticTasks(3, curvature=(0.0, 1.0))


def test_episode_task_slicing_and_shape_check():
    e = Sinusoid().sample(4, rng())
    t = e.task(2)
    assert t.n_tasks == 1 and t.backend == "numpy"
    np.testing.assert_array_equal(t.x_query[0], e.x_query[2])
    assert t.info["amplitude"][0] == e.info["amplitude"][2]
    np.testing.assert_array_equal(e.to_backend("numpy").y_query, e.y_query)
    with pytest.raises(ValueError, match="leading task axis"):
        Episode(e.x_support, e.y_support[:2], e.x_query, e.y_query)
    with pytest.raises(IndexError):
        e.task(4)


# ----------------------------------------------------------------- quadratic tasks


@given(dim=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_quadratic_episode_encodes_the_task_quadratics(dim, seed):
    e = QuadraticTasks(dim, curvature=(0.3, 3.0), query_shift=0.7).sample(3, rng(seed))
    info = e.info
    np.testing.assert_allclose(
        np.einsum("tki,tkj->tij", e.x_support, e.x_support), info["P"], atol=1e-12
    )
    np.testing.assert_allclose(np.einsum("tij,tj->ti", e.x_query, info["b"]), e.y_query[..., 0])
    evals = np.linalg.eigvalsh(info["Q"])
    assert np.all(evals > 0.3 - 1e-10) and np.all(evals < 3.0 + 1e-10)
    model = QuadraticModel(dim)
    phi = model.init(rng(seed + 1))
    for x, y, m, c in ((e.x_support, e.y_support, "P", "a"), (e.x_query, e.y_query, "Q", "b")):
        d = phi - info[c]
        closed = 0.5 * np.einsum("ti,tij,tj->t", d, info[m], d)
        np.testing.assert_allclose(model.loss(model.apply(phi, x), y), closed, rtol=1e-12)
    np.testing.assert_array_equal(QuadraticTasks.optimum(e), info["b"])
    np.testing.assert_array_equal(QuadraticTasks.optimum(e, "support"), info["a"])


def test_quadratic_adapted_equals_gradient_descent_on_the_support_loss():
    e = QuadraticTasks(4, query_shift=0.5).sample(3, rng(1))
    model = QuadraticModel(4)
    theta = model.init(rng(2))
    lr, steps = 0.3, 7

    def support_loss(phi):
        return anp.sum(model.loss(model.apply(phi, e.x_support), e.y_support))

    phi = np.broadcast_to(theta, (3, 4)).copy()
    for _ in range(steps):
        phi = phi - lr * autograd.grad(support_loss)(phi)
    np.testing.assert_allclose(QuadraticTasks.adapted(theta, e, lr, steps), phi, rtol=1e-12)


def test_quadratic_maml_optimum_is_stationary():
    e = QuadraticTasks(3, query_shift=0.5).sample(4, rng(3))
    lr, steps = 0.2, 3
    model = QuadraticModel(3)

    def meta_objective(theta):
        phi = QuadraticTasks.adapted(theta, e, lr, steps)
        return anp.mean(model.loss(model.apply(phi, e.x_query), e.y_query))

    def meta_objective_unrolled(theta):
        phi = theta * anp.ones((4, 1))
        for _ in range(steps):
            g = autograd.grad(
                lambda p: anp.sum(model.loss(model.apply(p, e.x_support), e.y_support))
            )
            phi = phi - lr * g(phi)
        return anp.mean(model.loss(model.apply(phi, e.x_query), e.y_query))

    theta_star = QuadraticTasks.maml_optimum(e, lr, steps)
    grad = autograd.grad(meta_objective_unrolled)(theta_star)
    assert np.linalg.norm(grad) < 1e-10
    other = theta_star + 0.1 * rng(4).standard_normal(3)
    assert meta_objective_unrolled(other) > meta_objective_unrolled(theta_star)
    np.testing.assert_allclose(meta_objective(other), meta_objective_unrolled(other), rtol=1e-12)


# ----------------------------------------------------------------- few-shot dataset


def _labelled(n_classes=20, per_class=8):
    y = np.repeat(np.arange(n_classes) * 3 + 1, per_class)  # non-contiguous label values
    x = np.stack([y.astype(float), np.arange(y.size, dtype=float)], axis=1)
    return x, y


def test_partition_is_disjoint_and_covering():
    parts = [partition(37, s, (0.6, 0.2, 0.2), 4) for s in ("train", "val", "test")]
    assert sum(p.size for p in parts) == 37
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(37))
    np.testing.assert_array_equal(partition(37, "train", (0.6, 0.2, 0.2), 4), parts[0])
    with pytest.raises(ValueError, match="fractions"):
        partition(10, "train", (0.5, 0.2, 0.2), 0)
    with pytest.raises(ValueError, match="split"):
        partition(10, "dev", (0.6, 0.2, 0.2), 0)


def test_fewshot_episode_labels_and_no_overlap():
    x, y = _labelled()
    ds = FewShotDataset(x, y, ways=4, n_shot=2, n_query=3, split="train")
    e = ds.sample(5, rng(1))
    assert e.x_support.shape == (5, 8, 2) and e.y_support.shape == (5, 8)
    assert e.x_query.shape == (5, 12, 2) and e.y_query.shape == (5, 12)
    assert ds.loss == "cross_entropy" and e.y_support.dtype.kind == "i"
    classes = e.info["classes"]
    for t in range(5):
        assert len(set(classes[t])) == 4
        # each task label maps to its original class; the first feature is the true label
        np.testing.assert_array_equal(e.x_support[t, :, 0], classes[t][e.y_support[t]])
        np.testing.assert_array_equal(e.x_query[t, :, 0], classes[t][e.y_query[t]])
        rows_s, rows_q = set(e.x_support[t, :, 1]), set(e.x_query[t, :, 1])
        assert not rows_s & rows_q and len(rows_s) == 8 and len(rows_q) == 12
    again = ds.sample(5, rng(1))
    np.testing.assert_array_equal(again.x_query, e.x_query)


def test_fewshot_splits_have_disjoint_classes():
    x, y = _labelled()
    seen = {}
    for split in ("train", "val", "test"):
        ds = FewShotDataset(x, y, ways=2, n_shot=1, n_query=1, split=split)
        e = ds.sample(40, rng(2))
        seen[split] = set(np.unique(e.info["classes"]))
        assert seen[split] <= set(ds._class_ids)
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_fewshot_errors():
    x, y = _labelled(n_classes=3, per_class=4)
    with pytest.raises(ValueError, match="fewer than ways"):
        FewShotDataset(x, y, ways=5, n_shot=1, n_query=1, split="all")
    with pytest.raises(ValueError, match="n_shot \\+ n_query"):
        FewShotDataset(x, y, ways=2, n_shot=3, n_query=3, split="all")
    with pytest.raises(ValueError, match="integer class labels"):
        FewShotDataset(x, y.astype(float), ways=2, n_shot=1, n_query=1, split="all")
    with pytest.raises(ValueError, match="shape"):
        FewShotDataset(x[:5], y, ways=2, n_shot=1, n_query=1, split="all")


# ----------------------------------------------------------------- Omniglot


@needs_omniglot
def test_omniglot_images_decoded_and_merged():
    data = load_omniglot(OMNIGLOT)
    # Greek and Latin are in both archives: merged, not duplicated (20 drawings each)
    assert data.images.shape[1:] == (28, 28) and data.images.dtype == np.float32
    assert np.bincount(data.character).tolist() == [20] * len(data.characters)
    assert len(data.alphabets) == 8 and len(data.characters) == 242
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert data.images.mean() < 0.3  # inverted: background 0, strokes 1
    assert load_omniglot(OMNIGLOT) is data  # cached


@needs_omniglot
def test_omniglot_episode_shapes_labels_and_determinism():
    sampler = Omniglot(OMNIGLOT, ways=5, n_shot=2, n_query=3, split="train")
    e = sampler.sample(3, rng(0))
    assert e.x_support.shape == (3, 10, 1, 28, 28) and e.x_query.shape == (3, 15, 1, 28, 28)
    assert e.x_support.dtype == np.float32
    np.testing.assert_array_equal(e.y_support, np.tile(np.repeat(np.arange(5), 2), (3, 1)))
    np.testing.assert_array_equal(e.y_query, np.tile(np.repeat(np.arange(5), 3), (3, 1)))
    again = sampler.sample(3, rng(0))
    np.testing.assert_array_equal(again.x_support, e.x_support)
    np.testing.assert_array_equal(again.info["classes"], e.info["classes"])
    examples = e.info["examples"]
    for t in range(3):
        for w in range(5):
            assert len(set(examples[t, w])) == 5  # support and query drawn without overlap


@needs_omniglot
def test_omniglot_rotations_are_classes():
    data = load_omniglot(OMNIGLOT)
    sampler = Omniglot(OMNIGLOT, ways=5, n_shot=1, n_query=1, split="val")
    assert sampler.n_classes == 4 * len(sampler.characters)
    e = sampler.sample(8, rng(3))
    classes, examples = e.info["classes"], e.info["examples"]
    for t in range(8):
        for w in range(5):
            turns = classes[t, w] % 4
            base = data.images[examples[t, w, 0]]
            np.testing.assert_array_equal(e.x_support[t, w, 0], np.rot90(base, turns))
            assert data.character[examples[t, w, 0]] == classes[t, w] // 4


@needs_omniglot
@pytest.mark.parametrize("split_by", ["character", "alphabet"])
def test_omniglot_splits_are_disjoint(split_by):
    splits = {
        s: Omniglot(OMNIGLOT, ways=5, n_shot=1, n_query=1, split=s, split_by=split_by)
        for s in ("train", "val", "test")
    }
    chars = {s: set(o.characters) for s, o in splits.items()}
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    assert sum(len(c) for c in chars.values()) == 242
    if split_by == "alphabet":
        alph = {s: set(o.alphabets) for s, o in splits.items()}
        assert not alph["train"] & alph["val"] and not alph["val"] & alph["test"]
    e = splits["test"].sample(20, rng(0))
    assert set(np.unique(e.info["classes"])) <= set(splits["test"]._class_ids)


@needs_omniglot
def test_omniglot_single_archive_and_extracted_folder_agree(tmp_path):
    archive = sorted(OMNIGLOT.glob("*.zip"))[0]
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if "/Greek/character0" in n]
        z.extractall(tmp_path, members=names)
    from_zip = load_omniglot(archive)
    from_dir = load_omniglot(tmp_path)
    assert len(from_dir.characters) == 9 and from_dir.alphabets == ("Greek",)
    for c, name in enumerate(from_dir.characters):
        i = from_zip.characters.index(name)
        np.testing.assert_array_equal(
            from_dir.images[from_dir.character == c], from_zip.images[from_zip.character == i]
        )


def tiny_omniglot(folder: Path) -> Path:
    """A generated archive: 2 alphabets × 2 characters × 2 drawings of 8×8 PNGs."""
    Image = pytest.importorskip("PIL.Image")
    archive = folder / "images_background.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for a, alphabet in enumerate(("Alpha", "Beta")):
            for c in range(2):
                for d in range(2):
                    buf = io.BytesIO()
                    pixels = np.full((8, 8), 255, np.uint8)
                    pixels[a + c : a + c + 3, d : d + 4] = 0
                    Image.fromarray(pixels).save(buf, format="PNG")
                    name = f"images_background/{alphabet}/character{c:02d}/{c}_{d:02d}.png"
                    zf.writestr(name, buf.getvalue())
    return archive


def test_omniglot_path_from_environment_variable(tmp_path, monkeypatch):
    tiny_omniglot(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    data = load_omniglot(image_size=8)
    assert data.images.shape == (8, 8, 8)
    assert data.alphabets == ("Alpha", "Beta") and len(data.characters) == 4
    assert data.images.max() == 1.0 and data.images.min() == 0.0   # strokes 1
    assert load_omniglot(tmp_path, image_size=8) is data               # same files, cached
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(FileNotFoundError, match="BILEVEL_OMNIGLOT is not set"):
        load_omniglot(image_size=8)


def test_omniglot_missing_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_omniglot(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no Omniglot images"):
        load_omniglot(tmp_path)


@pytest.mark.cupy
def test_samplers_on_cupy_match_numpy():
    for sampler_np, sampler_cp in (
        (Sinusoid(), Sinusoid(backend="cupy")),
        (QuadraticTasks(3), QuadraticTasks(3, backend="cupy")),
    ):
        a, b = sampler_np.sample(2, rng(0)), sampler_cp.sample(2, rng(0))
        assert b.backend == "cupy"
        np.testing.assert_array_equal(backend.to_numpy(b.x_support), a.x_support)
        np.testing.assert_array_equal(
            backend.to_numpy(b.info["a" if "a" in b.info else "phase"]),
            a.info["a" if "a" in a.info else "phase"],
        )
