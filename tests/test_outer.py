"""The shared outer-loop driver (bilevel.outer): atomic writes, the memory meter, options,
the checkpoint format and drive/restore on a toy objective."""

import os

import numpy as np
import pytest

from bilevel.optim import SGD, Adam
from bilevel.outer import (
    Checkpointing,
    LoopState,
    Monitoring,
    ResumeError,
    Step,
    atomic_write,
    drive,
    load_checkpoint,
    measure,
    read_run,
    restore,
    save_checkpoint,
)

QUIET = Monitoring(progress=False, memory=None)


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with atomic_write(path, "w") as fh:
        fh.write("one")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as fh:
        fh.write("two")
        raise RuntimeError("crash during the write")
    assert path.read_text() == "one"
    assert os.listdir(path.parent) == ["f.txt"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(path, "a"):
            pass


def test_memory_meter_modes():
    out, peak = measure(lambda: np.ones(1 << 20), "peak")
    assert out.size == 1 << 20 and peak >= 8 * (1 << 20)
    assert np.isnan(measure(lambda: 1, None)[1])
    assert measure(lambda: 1, "rss")[1] > 0
    with pytest.raises(ValueError, match="memory must be one of"):
        measure(lambda: 1, "gpu")


def test_options_are_validated():
    assert Checkpointing(every=3.0).every == 3
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Checkpointing(every=0)
    with pytest.raises(ValueError, match="resume must be True or False"):
        Checkpointing(resume="yes")
    with pytest.raises(ValueError, match="memory must be one of"):
        Monitoring(memory="heap")
    m = Monitoring(memory="peak", memory_every=2)
    assert [m.meter(t) for t in range(3)] == ["peak", None, "peak"]


def _quadratic(target):
    """Noisy gradient of ½‖θ − target‖², the noise drawn from the loop's generator."""

    def step(state):
        noise = 0.01 * state.rng.standard_normal(state.params.shape)
        grad = state.params - target + noise
        state.extra["calls"] = state.extra.get("calls", 0) + 1
        return Step(grad, {"loss": float(0.5 * np.sum((state.params - target) ** 2))})

    return step


def _state(seed=0):
    theta = np.zeros(3)
    return LoopState(params=theta, optimizer_state=Adam(0.1).init(theta),
                     rng=np.random.default_rng(seed), history={"step": [], "loss": [],
                                                               "time": [], "peak_memory": []})


def test_drive_kill_and_resume_is_bit_identical(tmp_path):
    target, opt, config = np.arange(3.0), Adam(0.1), {"run": "toy"}
    full = _state()
    assert drive(_quadratic(target), full, opt, steps=8, config=config, monitoring=QUIET) is None
    ck = Checkpointing(tmp_path / "ck.npz", every=3)

    def kill(state, out):
        if state.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(_quadratic(target), _state(), opt, steps=8, config=config, checkpointing=ck,
              monitoring=QUIET, callback=kill)
    assert read_run(ck.path)["step"] == 3
    state = restore(_state(), ck, config)
    assert state.step == 3 and state.extra["calls"] == 3
    drive(_quadratic(target), state, opt, steps=8, config=config, checkpointing=ck,
          monitoring=QUIET)
    np.testing.assert_array_equal(state.params, full.params)
    assert state.history["loss"] == full.history["loss"]
    assert state.history["step"] == list(range(8))
    with pytest.raises(ResumeError, match="different run.*'toy' in the checkpoint"):
        restore(_state(), ck, {"run": "other"})
    fresh = restore(_state(), Checkpointing(ck.path, resume=False), {"run": "other"})
    assert fresh.step == 0


def test_drive_stops_saves_and_projects(tmp_path):
    ck = Checkpointing(tmp_path / "ck.npz", every=100)

    def step(state):
        stop = "enough" if state.step == 2 else None
        return Step(-np.ones(2), {"loss": 0.0}, stop=stop)

    state = LoopState(np.zeros(2), SGD(1.0).init(np.zeros(2)), np.random.default_rng(0),
                      {"step": [], "loss": [], "time": [], "peak_memory": []})
    stop = drive(step, state, SGD(1.0), steps=10, config={}, checkpointing=ck,
                 monitoring=QUIET, project=lambda p: np.minimum(p, 2.5))
    assert stop == "enough" and state.step == 3
    np.testing.assert_array_equal(state.params, [2.5, 2.5])
    assert read_run(ck.path)["step"] == 3  # an early stop is saved at once

    def failing(state):
        return Step(None, {"loss": np.nan}, stop="non-finite", failed=True)

    state2 = restore(LoopState(np.zeros(2), {}, np.random.default_rng(0),
                               {"step": [], "loss": [], "time": [], "peak_memory": []}),
                     ck, {})
    assert drive(failing, state2, SGD(1.0), steps=10, config={}, checkpointing=ck,
                 monitoring=QUIET) == "non-finite"
    assert read_run(ck.path)["step"] == 3  # a failed step is not saved


def test_read_run_refuses_other_files(tmp_path):
    path = tmp_path / "x.npz"
    save_checkpoint(path, {"a": np.ones(2)})
    np.testing.assert_array_equal(load_checkpoint(path)["a"], np.ones(2))
    with pytest.raises(ValueError, match="not of an outer loop"):
        read_run(path)
    np.savez(path, a=np.ones(2))
    with pytest.raises(ValueError, match="not a bilevel checkpoint.*start afresh"):
        read_run(path)


# ------------------------------------------------------------------ issue 13: files and faults
def test_atomic_write_uses_the_umask_and_removes_stale_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        stale = tmp_path / ".f.txt.999999999.tmp"  # left by a killed process (no such pid)
        stale.write_text("half")
        live = tmp_path / f".f.txt.{os.getppid()}.tmp"  # a running writer: left alone
        live.write_text("busy")
        with atomic_write(tmp_path / "f.txt", "w") as fh:
            fh.write("done")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        assert not stale.exists() and live.exists()
    finally:
        os.umask(old)


def test_checkpoint_keeps_the_previous_version(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"x": np.arange(3.0)})
    save_checkpoint(path, {"x": np.arange(4.0)})
    assert load_checkpoint(str(path) + ".prev")["x"].shape == (3,)
    assert load_checkpoint(path)["x"].shape == (4,)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "json"])
def test_unreadable_checkpoint_names_the_file(tmp_path, damage):
    from bilevel.outer import CheckpointError

    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"x": np.arange(3.0)})
    data = path.read_bytes()
    if damage == "json":
        np.savez(path, __meta__=np.array("{not json"))
    else:
        path.write_bytes({"truncated": data[:100], "empty": b"", "garbage": b"abc"}[damage])
    with pytest.raises(CheckpointError, match="ck.npz' is unreadable") as err:
        load_checkpoint(path)
    assert "start afresh" in str(err.value) and "--no-resume" in err.value.for_cli()
    assert isinstance(err.value, ValueError)


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    from bilevel.outer import MissingFileError

    with pytest.raises(FileNotFoundError, match="no checkpoint") as err:
        read_run(tmp_path / "none.npz")
    assert isinstance(err.value, MissingFileError)


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path):
    from bilevel.outer import CheckpointWarning

    path = tmp_path / "run.npz"
    kw = dict(steps=6, config={"a": 1},
              checkpointing=Checkpointing(path, every=1), monitoring=QUIET)
    opt = SGD(0.1)

    def fresh():
        theta = np.array([3.0, -2.0])
        return LoopState(theta, opt.init(theta), np.random.default_rng(0), {"loss": []})

    step = lambda s: Step(2 * s.params, {"loss": float(s.params @ s.params)})  # noqa: E731
    straight = fresh()
    drive(step, straight, opt, steps=6, config={"a": 1}, monitoring=QUIET)
    first = fresh()
    drive(step, first, opt, **{**kw, "steps": 4})
    path.write_bytes(path.read_bytes()[:150])  # the newest checkpoint is damaged on disk
    with pytest.warns(CheckpointWarning, match="previous checkpoint .*run.npz.prev.*step 3"):
        state = restore(fresh(), kw["checkpointing"], {"a": 1})
    assert state.step == 3
    drive(step, state, opt, **kw)
    np.testing.assert_array_equal(state.params, straight.params)
    assert state.history["loss"] == straight.history["loss"]


def test_resume_error_names_the_fields(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, {"step": 1, "params": np.zeros(2), "optimizer_state": {},
                           "rng": np.random.default_rng(0).bit_generator.state,
                           "history": {}, "config": {"model": "tanh", "seed": 0}})
    theta = np.zeros(2)
    state = LoopState(theta, {}, np.random.default_rng(0), {})
    with pytest.raises(ResumeError, match="model: 'tanh' in the checkpoint, 'relu' now") as err:
        restore(state, Checkpointing(path), {"model": "relu", "seed": 0, "new_field": 1})
    assert err.value.fields == ("model",)  # fields an older checkpoint lacks are not compared
    assert "resume=False" in str(err.value) and "--no-resume" in err.value.for_cli()


def test_describe_tells_models_apart():
    from bilevel.meta.models import MLP
    from bilevel.outer import describe

    assert describe(MLP((1, 4, 1), activation="tanh")) != describe(MLP((1, 4, 1),
                                                                        activation="relu"))
    assert describe(MLP((1, 4, 1))) == describe(MLP((1, 4, 1)))
    assert describe(np.zeros(3)) != describe(np.ones(3))
    assert describe(lambda x: x + 1) != describe(lambda x: x + 2)
