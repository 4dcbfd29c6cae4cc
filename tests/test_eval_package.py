"""``vlmdpo.eval`` exports: every public name resolves, and importing the package stays light."""

import subprocess
import sys

import pytest

import vlmdpo.eval


@pytest.mark.parametrize("name", vlmdpo.eval.__all__)
def test_every_exported_name_is_importable(name):
    value = getattr(vlmdpo.eval, name)
    assert getattr(value, "__name__", name) == name
    assert name in dir(vlmdpo.eval)


def test_exports_are_sorted_and_unknown_names_still_fail():
    assert vlmdpo.eval.__all__ == sorted(set(vlmdpo.eval.__all__))
    with pytest.raises(AttributeError, match="no_such_metric"):
        vlmdpo.eval.no_such_metric
    from vlmdpo.eval import suite  # a submodule of the same package still imports as a module

    assert suite.caption_metrics is vlmdpo.eval.caption_metrics


def test_import_does_not_load_torch_or_matplotlib():
    # A fresh interpreter: this test process has long imported torch.
    code = ("import sys, vlmdpo.eval; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
