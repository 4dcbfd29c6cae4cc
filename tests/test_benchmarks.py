"""The benchmarks' own measuring: a runner's peak memory is that of training, not of loading the model."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_clock  # noqa: E402


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
