"""The notebooks run top to bottom (nbclient, a fresh python3 kernel, quick mode) and do what they say.

Each notebook asserts its own results in its cells (the trained steering lowers the loss, the steered answers differ,
a saved steering loads back; the sweep's tables and figures are complete); here we check that no cell failed and
that the expected files and outputs exist. `PROSV_JAX_NOTEBOOK_QUICK=1` selects tiny sizes, `PROSV_JAX_CACHE` a
fresh cache (the quickstart builds the built-in tiny random model, in a second) and `PROSV_JAX_NOTEBOOK_OUT` the
output folder.
"""

from __future__ import annotations

import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def execute(name: str, tmp_path, monkeypatch) -> nbformat.NotebookNode:
    """Runs notebooks/<name> in quick mode with cwd notebooks/; returns the executed notebook."""
    path = os.path.join(NOTEBOOKS, name)
    with open(path) as f:
        nb = nbformat.read(f, as_version=4)
    for cell in nb.cells:  # committed without outputs, so diffs stay small
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: commit it with outputs cleared"
    monkeypatch.setenv("PROSV_JAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROSV_JAX_NOTEBOOK_OUT", str(tmp_path / "out"))
    # The kernel is this interpreter (jupyter_client swaps "python" for sys.executable).
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name}: a cell failed:\n{error}")
    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o and "text/plain" in o.data:
                out.append(o.data["text/plain"])
    return "\n".join(out)


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))


def test_the_notebooks_start_with_a_title_and_an_install_cell():
    for name in ("quickstart.ipynb", "scaling_study.ipynb"):
        with open(os.path.join(NOTEBOOKS, name)) as f:
            nb = nbformat.read(f, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        install = nb.cells[1]
        assert install.cell_type == "code" and "import prosv_jax" in install.source and "%pip install" in install.source
        assert "PROSV_JAX_NOTEBOOK_QUICK" in nb.cells[3].source  # the visible parameters cell


def test_quickstart(tmp_path, monkeypatch):
    nb = execute("quickstart.ipynb", tmp_path, monkeypatch)
    out = tmp_path / "out"
    run = out / "quickstart"
    assert (run / "summary.json").is_file() and (run / "loss_curves.png").is_file()
    summary = json.loads((run / "summary.json").read_text())["prosv"]
    assert not summary["diverged"] and summary["steps"] > 0
    for saved in (run / "runs" / "prosv", out / "quickstart_prosv"):
        assert (saved / "steering.json").is_file() and (saved / "params.safetensors").is_file()
    spec = json.loads((out / "quickstart_prosv" / "steering.json").read_text())
    assert spec["sites"][0]["positions"] == "f2+l2"
    losses = spec["info"]["losses"]
    assert losses["trained SV"]["train"] < losses["initial SV"]["train"]
    text = text_of(nb)
    assert "answers changed by the steering" in text and "prosv-jax generate" in text
    assert images_of(nb) >= 1  # the loss curve, inline
    # The quick model was built into the test's own cache, not the user's.
    assert any(name.startswith("tiny-gemma2-random-") for name in os.listdir(tmp_path / "cache"))


def test_scaling_study(tmp_path, monkeypatch):
    nb = execute("scaling_study.ipynb", tmp_path, monkeypatch)
    sweep = tmp_path / "out" / "scaling_sweep"
    assert (sweep / "results.csv").is_file() and (sweep / "spec.json").is_file()
    figures = [f for f in os.listdir(tmp_path / "out" / "scaling_figures") if f.endswith(".png")]
    assert len(figures) >= 4, figures
    assert images_of(nb) >= 4  # heatmaps, learning-rate curves and exponents, baselines, inline
    assert "predicted" in text_of(nb)
    assert "## Fitted exponents" in (sweep / "figures" / "tables.md").read_text()
