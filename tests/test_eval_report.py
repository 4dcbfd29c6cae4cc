"""report.md tables, PNG plots and results.json from hand-made results."""

import json

import matplotlib
import pytest

from vlmdpo.eval.report import comparison_tables, flatten_metrics, read_metrics_jsonl, write_report

RESULTS = {
    "base": {
        "preference": {"reward_accuracy": None, "logp_accuracy": 0.5, "num_pairs": 2,
                       "per_pair": [{"index": 0, "margin": None}, {"index": 1, "margin": None}]},
        "pope": {"random": {"f1": 0.5, "tp": 3}},
        "settings": {"prompt": "Describe the image.", "max_new_tokens": 8, "checkpoint": "tiny:llava"},
        "settings_hash": "abc",
    },
    "dpo": {
        "preference": {"reward_accuracy": 1.0, "logp_accuracy": 1.0, "num_pairs": 2,
                       "per_pair": [{"index": 0, "margin": 0.2}, {"index": 1, "margin": 0.4}]},
        "pope": {"random": {"f1": 0.75, "tp": 4}},
        "chair": {"chair_i": 0.125},
        "settings": {"prompt": "Describe the image.", "max_new_tokens": 8, "checkpoint": "runs/dpo"},
        "settings_hash": "def",
    },
}


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    block = markdown.split(f"### {heading}\n", 1)[1].split("\n\n###", 1)[0].split("\n\n##", 1)[0]
    lines = [line for line in block.strip().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_flatten_keeps_numbers_and_none_only():
    flat = flatten_metrics({"a": {"b": 1.0, "c": None, "d": "text", "e": True, "f": [1.0]}, "g": 2,
                            "settings": {"x": 1.0}, "per_pair": [{"margin": 1.0}]})
    assert flat == {"a/b": 1.0, "a/c": None, "g": 2}


def test_tables_have_one_row_per_checkpoint_and_the_present_columns():
    markdown = comparison_tables(RESULTS)
    preference = table_rows(markdown, "preference")
    assert preference[0] == ["checkpoint", "reward_accuracy", "logp_accuracy", "num_pairs"]
    assert preference[2:] == [["base", "n/a", "0.5", "2"], ["dpo", "1", "1", "2"]]
    assert table_rows(markdown, "pope/random")[2:] == [["base", "0.5", "3"], ["dpo", "0.75", "4"]]
    # a metric only one checkpoint has leaves the other's cell empty
    assert table_rows(markdown, "chair")[2:] == [["base", ""], ["dpo", "0.125"]]


def test_write_report_files(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.0},
               {"step": 2, "loss": 0.6, "rewards/accuracies": 1.0, "rewards/margins": 0.3, "eval/chair_i": 0.2}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')  # killed mid-write
    assert read_metrics_jsonl(metrics) == records
    backend = matplotlib.get_backend()

    paths = write_report(tmp_path / "out", RESULTS, training_metrics={"dpo": metrics}, title="Test report",
                         notes="Some notes.")

    assert matplotlib.get_backend() == backend  # the caller's backend is untouched
    names = set(paths)
    assert {"report.md", "results.json", "metrics_preference.png", "metrics_pope_random.png",
            "metrics_chair.png", "reward_margins.png", "training_curves.png"} <= names
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = paths["report.md"].read_text()
    assert report.startswith("# Test report\n\nSome notes.")
    assert "![training_curves](training_curves.png)" in report
    assert '- `prompt`: `"Describe the image."`' in report and "- `max_new_tokens`: `8`" in report
    assert '**dpo**: `checkpoint`: `"runs/dpo"`' in report  # settings that differ are listed per checkpoint
    assert json.loads(paths["results.json"].read_text()) == RESULTS


def test_report_without_pairs_or_training_curves(tmp_path):
    paths = write_report(tmp_path, {"only": {"length": {"mean_words": 3.0}}})
    assert set(paths) == {"report.md", "results.json", "metrics_length.png"}
    assert table_rows(paths["report.md"].read_text(), "length")[2:] == [["only", "3"]]


@pytest.mark.parametrize("value, text", [(0.123456, "0.1235"), (3, "3"), (None, "n/a"), (float("nan"), "nan")])
def test_number_format(value, text):
    assert table_rows(comparison_tables({"x": {"m": value}}), "metrics")[2] == ["x", text]
