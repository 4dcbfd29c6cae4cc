"""The notebooks, executed top to bottom by a real Jupyter kernel (``nbclient``) in a scratch folder, with
their quick settings (``VLMDPO_NOTEBOOK_QUICK=1``); a cell that raises fails the test. Committed notebooks
carry no outputs and no execution counts."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = {  # what each notebook must have written, relative to its working folder
    "01_quickstart": ["nb_quickstart/runs/dpo/adapter_model.safetensors", "nb_quickstart/eval/report.md"],
    "02_your_data_your_model": ["nb_your_data/run/adapter_model.safetensors", "nb_your_data/merged/config.json",
                                "nb_your_data/run/skipped_rows.jsonl", "nb_your_data/lengths.png"],
    "03_evaluate_and_compare": ["nb_compare/eval/report.md", "nb_compare/run/checkpoint-4/adapter"],
}


def test_the_three_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: {cell['id']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_kernel(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("VLMDPO_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(path.parents[1]), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(str(path), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for relative in EXPECTED[path.stem]:
        assert (tmp_path / relative).exists(), relative
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook shows no figure"
    assert not any(o.get("output_type") == "error" for o in outputs)
