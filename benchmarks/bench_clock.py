"""What ``bench_dpo.py`` measures in each runner's process: step start times, the first loss, and peak memory
counted from the moment the model is built (a CPU's resident set, or a GPU's allocated memory).

``LIVE_MEMORY_ENV`` is the environment ``bench_dpo.py --live-memory`` gives every runner, so that a CPU's
resident set follows its live tensors.
"""

from __future__ import annotations

import time

import torch

# glibc keeps freed blocks below its mmap threshold for reuse, and raises that threshold (up to 32 MiB) each time
# a larger block is freed, so a CPU process's resident set also counts memory it has freed; fixed at 64 KiB, every
# tensor-sized block is mapped and unmapped with its tensor, and the peak resident set follows the live tensors
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _peak_rss_mb() -> float:
    """The process's peak resident set since it started (where VmHWM cannot be reset)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Start the process's peak resident set (VmHWM) afresh from its current one, so that the peak a runner
    reports is that of training, not of loading the model (loading a bfloat16 checkpoint into a float32 model
    holds both for a moment: at 2B parameters that is the whole peak). False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


class StepClock:
    """Start times of the steps, the first step's loss, and memory before training."""

    def __init__(self, device: str):
        self.device, self.starts, self.first_loss, self.ready_mb = device, [], None, None
        self.peak_since_ready = False

    def ready(self):
        """Called once the model is built, before training; on a GPU the reference point is the first step.
        The peak is counted from here on (where the OS allows it on a CPU: ``peak_since_ready``)."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.peak_since_ready = True
        else:
            self.peak_since_ready = _reset_peak_rss()
            self.ready_mb = _status_mb("VmRSS")

    def begin(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            if self.ready_mb is None:  # everything is on the device now
                self.ready_mb = torch.cuda.memory_allocated() / 2**20
        self.starts.append(time.perf_counter())

    def loss(self, value):
        if self.first_loss is None:
            self.first_loss = float(value.detach())

    def result(self, batch_size: int) -> dict:
        """Timings from 3 steps on; with fewer (a smoke run: ``--pairs 1 --batch-size 1``) they are None."""
        timed = len(self.starts) - 2
        seconds = self.starts[-1] - self.starts[1] if timed >= 1 else None
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _status_mb("VmHWM") if self.peak_since_ready else _peak_rss_mb()
        grown = peak - self.ready_mb
        return {"pairs_per_s": timed * batch_size / seconds if seconds else None,
                "pairs": len(self.starts) * batch_size, "seconds_per_step": seconds / timed if seconds else None,
                "timed_steps": max(timed, 0), "peak_mb": peak, "train_mb": grown, "first_loss": self.first_loss,
                "peak_since_ready": self.peak_since_ready}
