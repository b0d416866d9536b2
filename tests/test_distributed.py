"""Work on other processes: meta-training, cross-validation and restarts on a thread pool
and on a real Dask ``LocalCluster`` (2 worker processes) equal the in-process runs bit for
bit, also when a worker dies in the middle of a run."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bilevel import GradientDescent
from bilevel.hpo import (
    cross_validate,
    fold_indices,
    grid_starts,
    minimize,
    minimize_many,
    problems,
    random_starts,
)
from bilevel.meta import IMAML, MAML, MLP, Sinusoid, train
from bilevel.meta.distributed import SeededTasks, combine_parts, meta_gradient, part_sizes
from bilevel.outer import Checkpointing, Monitoring
from bilevel.outer.executor import InProcess, Local, MissingDependency, Pool, open_executor

QUIET = Monitoring(progress=False)
RNG = np.random.default_rng(0)
X, Y = RNG.standard_normal((40, 3)), RNG.standard_normal(40)
HPO = dict(dynamics=GradientDescent(0.5, 10), steps=3, monitoring=QUIET)


def maml():
    return MAML(MLP((1, 8, 1), activation="tanh"), inner_lr=0.05, steps=2)


def sinusoids():
    return Sinusoid(n_shot=3, n_query=3)


def run(executor=None, parts=2, steps=3, sampler=None, **kw):
    return train(maml(), sampler or sinusoids(), steps=steps, meta_batch=6, parts=parts,
                 executor=executor, monitoring=QUIET, **kw)


def same_run(a, b):
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.history["loss"] == b.history["loss"]


# ------------------------------------------------------------------ without Dask
def test_seeded_parts_rebuild_the_meta_batch():
    assert part_sizes(7, 3) == [3, 2, 2]
    tasks = SeededTasks(sinusoids(), n_tasks=7, key=(0, 3, 5), parts=3)
    whole = tasks.episode()
    assert whole.n_tasks == 7
    np.testing.assert_array_equal(whole.x_query[3:5], tasks.part(1).x_query)
    np.testing.assert_array_equal(whole.info["phase"][5:], tasks.part(2).info["phase"])
    with pytest.raises(ValueError, match="parts must be at most"):
        SeededTasks(sinusoids(), n_tasks=2, parts=3)


def test_one_part_is_the_algorithms_meta_gradient():
    alg, tasks = maml(), SeededTasks(sinusoids(), n_tasks=4, key=(1, 3, 0), parts=1)
    theta = alg.init(np.random.default_rng(0))
    grad, step = meta_gradient(alg, theta, tasks)
    np.testing.assert_array_equal(grad, alg.meta_gradient(theta, tasks.part(0))[0])
    assert step.success


@pytest.mark.parametrize("algorithm", ["maml", "imaml"])
def test_thread_pool_equals_in_process(algorithm):
    alg = maml() if algorithm == "maml" else IMAML(MLP((1, 8, 1), activation="tanh"),
                                                   inner_lr=0.05, steps=5, reg=2.0)
    tasks = SeededTasks(sinusoids(), n_tasks=6, key=(2, 3, 0), parts=3)
    theta = alg.init(np.random.default_rng(0))
    here, step_here = meta_gradient(alg, theta, tasks)
    with ThreadPoolExecutor(2) as pool:
        there, step_there = meta_gradient(alg, theta, tasks, executor=pool)
    np.testing.assert_array_equal(here, there)
    assert step_here.loss == step_there.loss and step_here.success == step_there.success
    whole, _ = alg.meta_gradient(theta, tasks.episode())
    np.testing.assert_allclose(here, whole, rtol=1e-12, atol=1e-14)  # the same mean


def test_train_on_a_thread_pool_equals_in_process():
    with ThreadPoolExecutor(2) as pool:
        same_run(run(), run(pool, parts=None))  # parts default: one per worker
    unsplit = run(parts=None)
    assert not np.array_equal(unsplit.theta, run().theta)  # another task stream


def test_combine_parts_drops_failed_tasks():
    ok = {"loss": 1.0, "success": True, "task_success": np.array([True, True])}
    bad = {"loss": np.nan, "success": False, "task_success": np.array([True, False])}
    grad, step = combine_parts([(np.ones(2), ok), (np.full(2, 4.0), bad)], [2, 2])
    np.testing.assert_array_equal(grad, np.full(2, 2.0))  # (2·1 + 1·4) / 3
    assert not step.success and step.success_fraction == 0.75


def test_executor_arguments():
    with open_executor(None) as runner:
        assert isinstance(runner, InProcess) and runner.map(pow, [2, 3], exp=2) == [4, 9]
    with ThreadPoolExecutor(3) as pool, open_executor(pool) as runner:
        assert isinstance(runner, Pool) and runner.workers == 3
    with pytest.raises(TypeError, match="executor must be"):
        with open_executor(42):
            pass
    with pytest.raises(ValueError, match="workers"):
        Local(workers=0)
    with pytest.raises(ValueError, match="parts must be at most meta_batch"):
        run(parts=7)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependency, match=r'pip install "bilevel\[distributed\]"'):
        with open_executor("local"):
            pass


def test_hpo_on_a_thread_pool_equals_sequential():
    prob = problems.ridge(X[:20], Y[:20], X[20:], Y[20:])
    starts = grid_starts([-1.0, 0.0], [0.0], [0.5])
    with ThreadPoolExecutor(2) as pool:
        many = minimize_many(prob, starts, np.zeros(3), executor=pool, **HPO)
    for start, res in zip(starts, many.results, strict=True):
        np.testing.assert_array_equal(res.lam, minimize(prob, start, np.zeros(3), **HPO).lam)
    assert many.best_value == min(r.best_value for r in many.results)
    assert random_starts(np.zeros(2), np.ones(2), 4).shape == (4, 2)
    train_rows, val_rows = fold_indices(10, 3)[1]
    assert list(val_rows) == [4, 5, 6] and len(train_rows) == 7


# ------------------------------------------------------------------ on a Dask cluster
class KillOnce:
    """A sampler whose first draw kills the worker process drawing it (a lost worker in
    the middle of a meta-iteration); the marker file makes it happen once."""

    def __init__(self, sampler, marker):
        self.sampler, self.marker, self.backend = sampler, marker, "numpy"

    def sample(self, n_tasks, rng):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.sampler.sample(n_tasks, rng)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def test_meta_training_on_the_cluster_is_bit_identical(client):
    same_run(run(), run(client, parts=None))


def test_checkpoint_resume_on_the_cluster(client, tmp_path):
    path = os.fspath(tmp_path / "run.npz")
    run(client, steps=2, checkpointing=Checkpointing(path, every=1))
    resumed = run(client, steps=4, checkpointing=Checkpointing(path, every=1))
    assert resumed.start_iteration == 2
    same_run(resumed, run(steps=4))


def test_a_worker_killed_mid_iteration_changes_nothing(client, tmp_path):
    killer = KillOnce(sinusoids(), os.fspath(tmp_path / "killed"))
    survived = run(client, sampler=killer)
    assert os.path.exists(killer.marker)
    same_run(survived, run())


def test_workers_restarted_between_iterations_change_nothing(client):
    def restart(iteration, params, history):
        if iteration == 0:
            client.restart_workers([next(iter(client.scheduler_info()["workers"]))])

    same_run(run(client, callback=restart), run())


def test_hpo_on_the_cluster_equals_sequential(client):
    cv = dict(folds=4, dynamics=GradientDescent(0.5, 10))
    here = cross_validate(problems.ridge, X, Y, np.zeros(3), np.zeros(3), **cv)
    there = cross_validate(problems.ridge, X, Y, np.zeros(3), np.zeros(3), executor=client, **cv)
    np.testing.assert_array_equal(here.grad, there.grad)
    assert here.value == there.value and len(there.folds) == 4
    prob = problems.ridge(X[:20], Y[:20], X[20:], Y[20:])
    starts = random_starts(-np.ones(3), np.ones(3), 3)
    many = minimize_many(prob, starts, np.zeros(3), executor=client, **HPO)
    for start, res in zip(starts, many.results, strict=True):
        np.testing.assert_array_equal(res.lam, minimize(prob, start, np.zeros(3), **HPO).lam)


def _scaled_sum(k, *, values):
    return k * float(values.sum())


def test_values_lost_with_every_worker_are_sent_again(client):
    with open_executor(client) as runner:
        shared = runner.put(np.arange(3.0))
        client.restart()
        assert runner.map(_scaled_sum, [1, 2], values=shared) == [3.0, 6.0]


# ------------------------------------------------------------------ command line
def _meta_train(tmp_path, name, *flags):
    from bilevel.cli import main
    from bilevel.meta import load_checkpoint

    out = os.fspath(tmp_path / name)
    code = main(["meta-train", "--quick", "--hidden", "4", "--steps", "3", "--meta-batch", "4",
                 "--eval-every", "0", "--no-progress", "--out", out, *flags])
    return code, (load_checkpoint(os.path.join(out, "checkpoint.npz"))["params"]
                  if code == 0 else None)


def test_cli_scheduler_equals_parts_in_process(client, tmp_path, capsys):
    code, there = _meta_train(tmp_path, "cluster", "--scheduler", client.scheduler.address)
    assert code == 0
    code, here = _meta_train(tmp_path, "here", "--parts", "2")
    np.testing.assert_array_equal(there, here)


def test_cli_errors_name_the_flags(tmp_path, capsys, monkeypatch):
    assert _meta_train(tmp_path, "a", "--parts", "5")[0] == 2
    assert "--parts must be at most --meta-batch 4" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert _meta_train(tmp_path, "b", "--workers", "2")[0] == 2
    assert 'pip install "bilevel[distributed]"' in capsys.readouterr().err


def test_bench_row_on_the_cluster(client):
    from bilevel.bench import distributed as bench
    from bilevel.outer.executor import Dask

    row = bench._measure("sinusoid MLP", Dask(client), 2, quick=True, seed=0, repeats=1)
    assert row["workers"] == row["parts"] == 2 and row["seconds"] > 0
    assert row["overhead_seconds"] > 0 and row["speedup"] > 0
    assert "| sinusoid MLP |" in bench.to_markdown({"rows": [row], "cpus": 2})


def _alignment(k, *, values):
    return [int(a.ctypes.data % a.itemsize) for a in values] + [bool(values[0].flags.aligned)]


def test_values_put_on_the_workers_arrive_aligned(client):
    """Dask's own serialization can hand an array over at any byte offset of its message
    (unaligned loops round differently): put values are unpickled into fresh arrays."""
    values = [np.arange(n, dtype=float) for n in (3, 17, 40)]
    with open_executor(client) as runner:
        shared = runner.put(values)
        for got in runner.map(_alignment, range(4), values=shared):
            assert got == [0, 0, 0, True]
