"""``bilevel bench peers`` without its optional peers: rows, skips, table, CLI.

PyTorch and JAX are never imported here: the peers are reported as not installed, so the
bench measures bilevel alone and lists them as skipped.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bilevel.bench import peers
from bilevel.cli import main


@pytest.fixture
def no_peers(monkeypatch):
    monkeypatch.setattr(peers, "available_peers", lambda: [])

    def refuse(name):
        raise AssertionError(f"peer {name} imported although not installed")

    monkeypatch.setattr(peers, "_peer", refuse)


def test_quick_run_skips_missing_peers_cleanly(no_peers):
    result = peers.run(quick=True)
    assert result["peers"] == [] and result["skipped"] == list(peers.PEERS)
    labels = [r["row"] for r in result["rows"]]
    assert labels[0].startswith("MAML") and any("ridge" in lb for lb in labels)
    for row in result["rows"]:
        assert row["seconds"]["bilevel"] > 0 and row["peak_bytes"]["bilevel"] > 0
        assert set(row["agree"]) <= {"bilevel (autograd)", "bilevel (stored)"}
        assert all(v < 1e-12 for v in row["agree"].values())  # fast == autograd
    md = peers.to_markdown(result)
    assert "skipped: torch, jax" in md and "| MAML K=1 |" in md and "torch |" not in md


def test_cli_writes_the_peers_table(no_peers, tmp_path, capsys):
    out = os.fspath(tmp_path)
    assert main(["bench", "peers", "--quick", "--no-progress", "--out", out]) == 0
    assert os.path.exists(os.path.join(out, "peers.md"))
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert saved["rows"] and "bench peers" not in capsys.readouterr().err


def test_unknown_peer_and_backend_raise(no_peers):
    with pytest.raises(ValueError, match="unknown peer"):
        peers.run(quick=True, methods=["tensorflow"])
    with pytest.raises(ValueError, match="CPU"):
        peers.run(quick=True, backend="cupy")


def test_agreement_is_relative_to_bilevel():
    from bilevel.bench.interleaved import relative_difference as rel

    assert rel(np.array([1.0, 2.0 + 1e-15]), np.array([1.0, 2.0])) < 1e-15
    assert rel(np.array([0.0, 1.0]), np.array([0.0, 2.0])) == 0.5
