"""``bilevel bench hpo_large --quick``: one HPO step, library against hand-written Cholesky."""

import json

from bilevel.bench import hpo_large
from bilevel.cli import main


def test_quick_rows_agree_with_hand_written(tmp_path, capsys):
    assert main(["bench", "hpo_large", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| gram | 1000 | 100 |" in out and "| data | 1000 | 100 |" in out
    result = json.loads((tmp_path / "hpo_large.json").read_text())["result"]
    for row in result["rows"]:
        assert row["max_relative_difference"] < 1e-10
        assert row["ratio"] > 0 and "cached: reused" in row["message"]
    assert (tmp_path / "hpo_large.png").is_file()


def test_problem_forms_are_the_same_function():
    import numpy as np

    data = hpo_large.gram(hpo_large.ridge_data(50, 5, 20, seed=1))
    w, lam = np.linspace(-1, 1, 5), np.zeros(5)
    values = [hpo_large.ridge_problem(data, form).inner(w, lam) for form in ("gram", "data")]
    np.testing.assert_allclose(values[0], values[1], rtol=1e-12)
