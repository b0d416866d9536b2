"""Injected faults (issue 13): kill -9 mid-run and resume, damaged checkpoint files, NaN
injected mid-loop, an interrupted benchmark, a damaged image in a data archive.

A run killed with SIGKILL after its first checkpoint and resumed must lose nothing and end
bit-identical to the uninterrupted run; a damaged file must be refused naming it (or replaced
by its previous version, saying so), never read as wrong numbers.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
import zipfile

import numpy as np
import pytest

from bilevel.cli import main
from bilevel.meta import MAML, MLP, FailurePolicy, Sinusoid, train
from bilevel.optim import Adam
from bilevel.outer import (
    CheckpointError,
    Checkpointing,
    CheckpointWarning,
    Monitoring,
    UsageError,
    read_run,
    save_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
QUIET = Monitoring(progress=False)


def _start(args, **kw):
    return subprocess.Popen([sys.executable, *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def _kill_when(proc, ready, timeout=120.0):
    """SIGKILL ``proc`` as soon as ``ready()`` holds; True when it was killed mid-run."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        try:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        except (CheckpointError, OSError, ValueError):
            pass  # caught mid-write or not there yet: poll again
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the run never reached its first checkpoint")


def _no_temporaries(folder):
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")], os.listdir(folder)


# ------------------------------------------------------------------ kill -9 and resume
TRAIN = ["--steps", "150", "--meta-batch", "10", "--hidden", "20", "--no-progress",
         "--eval-every", "50", "--eval-tasks", "5", "--checkpoint-every", "1"]


@pytest.mark.slow  # two meta-training runs in subprocesses (about 15 s)
def test_kill_meta_train_and_resume_equals_the_uninterrupted_run(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    ck = run / "checkpoint.npz"
    proc = _start(["-m", "bilevel.cli", "meta-train", *TRAIN, "--out", str(run)])
    assert _kill_when(proc, lambda: ck.exists() and read_run(ck)["step"] >= 2)
    killed_at = read_run(ck)["step"]
    assert 2 <= killed_at < 150
    proc = _start(["-m", "bilevel.cli", "meta-train", *TRAIN, "--out", str(run)])
    assert proc.wait(300) == 0, proc.stderr.read().decode()
    assert main(["meta-train", *TRAIN, "--out", str(ref)]) == 0
    resumed, straight = read_run(ck), read_run(ref / "checkpoint.npz")
    assert resumed["step"] == straight["step"] == 150
    np.testing.assert_array_equal(resumed["params"], straight["params"])
    hist = [json.loads((d / "history.json").read_text()) for d in (run, ref)]
    assert hist[0]["history"]["loss"] == hist[1]["history"]["loss"]
    assert hist[0]["evaluations"] == hist[1]["evaluations"]
    _no_temporaries(run)


HPO_SCRIPT = """
import sys, time
import numpy as np
from bilevel import GradientDescent, Reverse
from bilevel.hpo import minimize, problems
from bilevel.outer import Checkpointing, Monitoring

rng = np.random.default_rng(0)
X, y = rng.standard_normal((40, 4)), rng.standard_normal(40)
prob = problems.ridge(X[:20], y[:20], X[20:], y[20:])
res = minimize(prob, np.zeros(4), np.zeros(4), steps=int(sys.argv[2]),
               dynamics=lambda t, r: GradientDescent(0.3, int(r.integers(10, 20))),
               method=Reverse(), seed=5, monitoring=Monitoring(progress=False),
               checkpointing=Checkpointing(sys.argv[1]),
               callback=lambda info: time.sleep(float(sys.argv[3])))
np.save(sys.argv[1] + ".lam.npy", res.lam)
np.save(sys.argv[1] + ".values.npy", res.history["value"])
"""


@pytest.mark.slow  # hyperparameter optimization in subprocesses (a few seconds)
def test_kill_hpo_and_resume_equals_the_uninterrupted_run(tmp_path):
    script = tmp_path / "hpo.py"
    script.write_text(HPO_SCRIPT)
    ck, ref = tmp_path / "run.npz", tmp_path / "ref.npz"
    proc = _start([str(script), str(ck), "30", "0.05"])
    assert _kill_when(proc, lambda: ck.exists() and read_run(ck)["step"] >= 2)
    assert read_run(ck)["step"] < 30
    for path, pause in ((ck, "0"), (ref, "0")):
        proc = _start([str(script), str(path), "30", pause])
        assert proc.wait(300) == 0, proc.stderr.read().decode()
    for suffix in (".lam.npy", ".values.npy"):
        np.testing.assert_array_equal(np.load(str(ck) + suffix), np.load(str(ref) + suffix))
    _no_temporaries(tmp_path)


@pytest.mark.slow  # a quick benchmark in subprocesses (about 20 s)
def test_kill_benchmark_and_resume_keeps_the_finished_rows(tmp_path):
    args = ["-m", "bilevel.cli", "bench", "meta", "--quick", "--no-progress", "--out",
            str(tmp_path), "--methods", "Reptile", "FOMAML", "ANIL"]
    log = tmp_path / "meta.json"

    def rows():
        return json.loads(log.read_text())["rows"]

    proc = _start(args)
    assert _kill_when(proc, lambda: log.exists() and len(rows()) >= 1)
    done = rows()
    assert 1 <= len(done) < 6
    proc = _start([*args, "--resume"])
    assert proc.wait(300) == 0, proc.stderr.read().decode()
    final = rows()
    assert final[:len(done)] == done  # nothing lost, nothing recomputed
    assert [r["key"] for r in final] == [[m, k] for m in ("Reptile", "FOMAML", "ANIL")
                                         for k in ("2", "8")]
    _no_temporaries(tmp_path)


def test_interrupted_benchmark_resumes(tmp_path, capsys, monkeypatch):
    import bilevel.bench.meta as bench_meta

    real, calls = bench_meta.algorithm, []

    def interrupted(*args, **kw):  # Ctrl-C during the second row
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(bench_meta, "algorithm", interrupted)
    args = ["bench", "meta", "--quick", "--no-progress", "--out", str(tmp_path), "--methods",
            "Reptile"]
    assert main(args) == 130
    assert "rerun with --resume" in capsys.readouterr().err
    saved = json.loads((tmp_path / "meta.json").read_text())["rows"]
    assert [r["key"] for r in saved] == [["Reptile", "2"]]
    monkeypatch.setattr(bench_meta, "algorithm", real)
    assert main([*args, "--resume"]) == 0
    rows = json.loads((tmp_path / "meta.json").read_text())["rows"]
    assert rows[0] == saved[0] and [r["key"] for r in rows] == [["Reptile", "2"],
                                                                  ["Reptile", "8"]]


# ------------------------------------------------------------------ damaged files
def _run_checkpoint(path, step=3, value=1.0):
    save_checkpoint(path, {"step": step, "params": np.full(50, value),
                           "optimizer_state": {"count": step, "mu": np.zeros(50)},
                           "rng": np.random.default_rng(0).bit_generator.state,
                           "history": {"loss": [0.5] * step}, "config": {"seed": 0}})


@pytest.mark.parametrize("damage", ["truncated", "empty", "zeros", "half"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    path = tmp_path / "ck.npz"
    _run_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-30], "empty": b"", "zeros": bytes(len(data)),
                      "half": data[: len(data) // 2]}[damage])
    with pytest.raises(CheckpointError, match=r"ck\.npz' is unreadable") as err:
        read_run(path)
    assert "start afresh" in str(err.value)


def test_bit_flips_never_load_wrong_numbers(tmp_path):
    """Every single-bit flip is refused or changes nothing that is read back."""
    path = tmp_path / "ck.npz"
    _run_checkpoint(path)
    good, data = read_run(path), bytearray(path.read_bytes())
    refused = 0
    for pos in range(0, len(data), max(1, len(data) // 60)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            ck = read_run(path)
        except CheckpointError as err:
            assert "ck.npz" in str(err)
            refused += 1
            continue
        np.testing.assert_array_equal(ck["params"], good["params"])
        assert ck["step"] == good["step"] and ck["history"] == good["history"]
    assert refused > 10


@pytest.mark.parametrize("damage", ["truncated", "empty", "bitflip"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    path = tmp_path / "ck.npz"
    _run_checkpoint(path, step=3, value=1.0)
    _run_checkpoint(path, step=4, value=2.0)
    data = bytearray(path.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0xFF
    path.write_bytes({"truncated": bytes(data[:200]), "empty": b"",
                      "bitflip": bytes(data)}[damage])
    with pytest.warns(CheckpointWarning, match=r"ck\.npz\.prev.*outer step 3"):
        ck = read_run(path)
    assert ck["step"] == 3 and np.all(ck["params"] == 1.0)


def test_meta_training_resumes_from_the_previous_checkpoint_bit_identically(tmp_path):
    kw = dict(steps=8, meta_batch=2, optimizer=Adam(1e-2), seed=2, monitoring=QUIET)
    alg, tasks = MAML(MLP((1, 8, 1)), 0.02, 1), Sinusoid(n_shot=3, n_query=3)
    straight = train(alg, tasks, **kw)
    ck = tmp_path / "ck.npz"
    train(alg, tasks, checkpointing=Checkpointing(ck, every=1), **{**kw, "steps": 5})
    ck.write_bytes(ck.read_bytes()[:100])  # the newest checkpoint is damaged
    with pytest.warns(CheckpointWarning):
        resumed = train(alg, tasks, checkpointing=Checkpointing(ck, every=1), **kw)
    assert resumed.start_iteration == 4
    np.testing.assert_array_equal(resumed.theta, straight.theta)
    assert resumed.history["loss"] == straight.history["loss"]


def test_damaged_results_file_falls_back_to_its_previous_version(tmp_path):
    from bilevel.bench.report import RowLog

    log = RowLog(tmp_path / "rows.json", "b", {"seed": 0})
    log.add(["a"], {"x": 1.0})
    log.add(["b"], {"x": 2.0})
    (tmp_path / "rows.json").write_text('{"benchmark": "b", "rows": [')
    with pytest.warns(CheckpointWarning, match="1 rows"):
        again = RowLog(tmp_path / "rows.json", "b", {"seed": 0}, resume=True)
    assert [r["key"] for r in again.rows] == [["a"]]
    (tmp_path / "rows.json.prev").write_text("")
    with pytest.raises(CheckpointError, match=r"rows\.json' is unreadable"):
        RowLog(tmp_path / "rows.json", "b", {"seed": 0}, resume=True)


# ------------------------------------------------------------------ NaN injected mid-loop
class _NaNAt(Sinusoid):
    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at, self.calls = at, 0

    def sample(self, n_tasks, rng):
        episode = super().sample(n_tasks, rng)
        self.calls += 1
        if self.calls - 1 == self.at:
            episode.x_support[1, 0] = np.nan
        return episode


def test_nan_injected_mid_meta_training_is_skipped_and_checkpointed(tmp_path):
    kw = dict(steps=6, meta_batch=2, seed=0, monitoring=QUIET, failures=FailurePolicy("drop"))
    alg = MAML(MLP((1, 8, 1)), 0.02, 1)
    straight = train(alg, _NaNAt(3, n_shot=3, n_query=3), **kw)
    assert straight.history["applied"] == [True, True, True, False, True, True]
    assert "non-finite" not in str(straight.history)  # recorded as a failed step, not raised
    ck = tmp_path / "ck.npz"
    train(alg, _NaNAt(3, n_shot=3, n_query=3), checkpointing=Checkpointing(ck, every=1),
          **{**kw, "steps": 4})
    tasks = _NaNAt(3, n_shot=3, n_query=3)  # same settings; its 4th draw is past the end
    resumed = train(alg, tasks, checkpointing=Checkpointing(ck, every=1), **kw)
    np.testing.assert_array_equal(resumed.theta, straight.theta)
    assert resumed.history["applied"] == straight.history["applied"]


# ------------------------------------------------------------------ damaged data
def _png(value):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_damaged_image_in_an_omniglot_archive_is_named(tmp_path):
    pytest.importorskip("PIL")
    from bilevel.meta.omniglot import clear_cache, load_omniglot

    archive = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images_background/Greek/character01/0001_01.png", _png(0))
        z.writestr("images_background/Greek/character01/0002_02.png", b"\x89PNG broken")
    clear_cache()
    with pytest.raises(UsageError, match=r"0002_02\.png' in '.*images_background\.zip'"):
        load_omniglot(archive)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["meta-train", "--tasks", f"omniglot:{archive}", "--out",
                     str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert not (tmp_path / "run" / "config.json").exists()
