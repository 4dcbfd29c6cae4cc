"""``benchmarks/compare_methods.py`` end to end on the demo's quick settings: every method trains from the same
cached base on self-sampled pairs, is evaluated, and is compared with the SFT control; finished runs are
reused."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_methods  # noqa: E402
from data_recipes.shapes.settings import QUICK  # noqa: E402


def test_every_method_runs_and_is_compared_with_the_control(tmp_path, capsys):
    settings = [q for q in QUICK if not q.startswith(("pairs.povid", "pairs.yes_no", "pairs.rlaif_images"))] + [
        "pairs.rlaif_images=16", "pairs.rlaif_margin=0", f"cache={tmp_path / 'cache'}"]
    out = tmp_path / "out"
    compare_methods.main(["--seeds", "0", "--out", str(out), "--threads", "1", *settings])
    table = (out / "comparison-self.md").read_text()
    for name in compare_methods.METHODS:
        assert f"| {name} |" in table
        result = json.loads((out / "seed0" / "self" / f"{name}.json").read_text())
        assert 0 <= result["chair_i"] <= 1 and 0 <= result["pope_f1"] <= 1 and result["captions"]
    assert (out / "seed0" / "self" / "iterative_sft" / "round-1" / "policy" / "DONE").exists()
    first = (out / "seed0" / "self" / "dpo.json").read_text()
    capsys.readouterr()
    compare_methods.main(["--seeds", "0", "--out", str(out), "--threads", "1", "--methods", "dpo", *settings])
    assert (out / "seed0" / "self" / "dpo.json").read_text() == first  # reused, not retrained
    assert "| dpo |" in capsys.readouterr().out
