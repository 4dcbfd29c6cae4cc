"""The benchmarks' own measuring (a runner's peak memory is that of training, not of loading the model) and
their models (``vlmdpo.tiny``'s builders at benchmark sizes)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_clock  # noqa: E402
import bench_setup  # noqa: E402


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's /proc/self/clear_refs")
def test_the_peak_resident_set_is_counted_from_ready_on():
    """A 400 MB block touched and freed before ``ready`` (as loading a checkpoint does) is not in the peak;
    a 100 MB block touched after it is."""
    loading = bytearray(400 * 2**20)
    loading[::4096] = b"\1" * len(loading[::4096])
    del loading
    peak_with_loading = bench_clock._status_mb("VmHWM")
    clock = bench_clock.StepClock("cpu")
    clock.ready()
    training = bytearray(100 * 2**20)
    training[::4096] = b"\1" * len(training[::4096])
    result = clock.result(batch_size=1)
    del training
    assert result["peak_since_ready"]
    assert 95 <= result["train_mb"] < 300
    assert result["peak_mb"] < peak_with_loading - 250


@pytest.mark.parametrize("model, scale, parameters", [
    ("llava", "small", 20_188_672), ("qwen2_vl", "small", 20_527_360),
    ("llava", "large", 1_715_898_880), ("qwen2_vl", "large", 2_074_112_512),
])
def test_the_benchmark_models_are_the_tiny_builders_at_their_sizes(model, scale, parameters):
    """``bench_setup`` builds from ``vlmdpo.tiny`` (on the meta device: nothing allocated) at the shapes its
    docstring names: about 20M parameters small, Qwen2-VL-2B's decoder at 1.7B (LLaVA) and 2.1B (Qwen2-VL)."""
    with torch.device("meta"):
        built, processor = bench_setup.build(model, scale, image_tokens=256)
    text = built.config.text_config
    assert (text.hidden_size, text.vocab_size) == (bench_setup.TEXT[scale]["hidden_size"], bench_setup.VOCAB)
    assert sum(p.numel() for p in built.parameters()) == parameters
    if model == "qwen2_vl":  # one saved model serves images up to MAX_IMAGE_TOKENS at their own size
        assert processor.image_processor.size["longest_edge"] == bench_setup.MAX_IMAGE_TOKENS * (2 * 14) ** 2


def test_the_demo_benchmark_table_reads_the_control_comparison():
    import bench_demo

    change = {"change": -0.1, "low": -0.15, "high": -0.05}
    model = {"chair_i": 0.1, "recall": 0.99, "pope_f1": 0.9, "mean_words": 12.0, "well_formed": 1.0}
    metrics = {"base": dict(model), "sft_control": dict(model, chair_i=0.2),
               "aligned": dict(model, vs_control={"chair_i": change, "pope_f1": change},
                               pope_f1_change={"change": 0.01, "low": -0.01, "high": 0.03}, pope_f1=0.91, chair_i=0.1,
                               well_formed=0.955)}
    rows = bench_demo.table([{"seed": 1, "threads": 2, "seconds": 90, "metrics": metrics},
                             {"seed": 2, "threads": 1, "seconds": 30, "error": "exit 1: boom"},
                             {"seed": 3, "threads": 1, "seconds": 60, "metrics": metrics,
                              "cached_stages": ["base", "data"]}]).splitlines()
    assert rows[2] == ("| 1 | 2 | 1.5 min | 0.100 / 0.200 / 0.100 | -0.100 [-0.150, -0.050] | 0.990 -> 0.990 "
                       "| 0.900 -> 0.910 [-0.010, +0.030] | 12.0 / 12.0 | 1.000 / 0.955 | PPP |")
    assert rows[3].startswith("| 2 | 1 | 0.5 min | failed: exit 1: boom")
    assert rows[4].startswith("| 3 | 1 | 1.0 min (base, data cached) | 0.100 / 0.200 / 0.100")
