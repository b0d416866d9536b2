"""The code on the getting-started page runs as written (blocks executed in order)."""

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: Path) -> list[str]:
    """The ``.. code-block:: python`` bodies of an rst page, dedented."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            body, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i][3:])
                i += 1
            blocks.append("\n".join(body))
        else:
            i += 1
    return blocks


@pytest.mark.parametrize("page", ["getting_started.rst"])
def test_code_blocks_run(page):
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 2, f"{page} lost its code examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), namespace)
    grad = namespace.get("grad")
    assert grad is not None and grad.shape == (5,)


@pytest.mark.filterwarnings("error")
def test_coming_from_page_runs():
    """docs/coming_from.rst: every python block runs, in order (its asserts hold)."""
    blocks = python_blocks(DOCS / "coming_from.rst")
    assert len(blocks) == 4, "coming_from.rst lost a code example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "coming_from.rst", "exec"), namespace)
    assert namespace["res"].best_lam.shape == (5,)
    assert namespace["phi"].shape[0] == 4


def test_readme_example_runs():
    text = (DOCS.parent / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    res = namespace["res"]
    assert res.success and res.grad.shape == (5,)


def test_architecture_page_examples():
    """The ``>>>`` examples of docs/architecture.rst (reprs, errors, registry) hold."""
    import doctest

    page = Path(__file__).resolve().parents[1] / "docs" / "architecture.rst"
    result = doctest.testfile(str(page), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0
