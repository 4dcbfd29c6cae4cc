"""The notebooks run as shipped: every code cell, in order, in a scratch folder."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    pytest.importorskip("IPython")
    monkeypatch.chdir(tmp_path)
    notebook = json.loads(path.read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"], f"{path.name} is committed with outputs"
            exec(compile("".join(cell["source"]), f"{path.name} cell {cell['id']}", "exec"), namespace)
    assert (tmp_path / "nb_runs" / "dpo" / "adapter_model.safetensors").exists()
