"""The GPU check (``python -m bilevel.bench.gpu``, ``tests/gpu/run.sh``) without a GPU."""

import os
import shutil
import subprocess
import sys

import pytest

from bilevel.bench import gpu


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)


def test_no_gpu_exits_cleanly_with_a_message(no_gpu, tmp_path, capsys):
    assert gpu.find_gpu() is None
    assert gpu.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no NVIDIA GPU found" in out and "nothing was run" in out
    assert "no NVIDIA GPU found" in (tmp_path / "gpu.md").read_text()
    assert gpu.main(["--out", str(tmp_path), "--require"]) == 2


def test_report_lists_every_step():
    rows = [dict(step=name, status="ok", seconds=1.0, tail="fine") for name in gpu.STEPS]
    text = gpu.report("NVIDIA H200, 143771 MiB, 550.54", "CuPy already installed", rows)
    assert "pytest -m cupy" in text and "bench meta" in text and text.count("| ok |") == 5
    assert sum(s.share for s in gpu._steps("x")) <= 1.0 + 1e-12


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is present")
def test_run_script_without_gpu(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "gpu", "run.sh")
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(["bash", script, "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no NVIDIA GPU found" in done.stdout
