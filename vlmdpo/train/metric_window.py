"""The metrics of the optimizer steps between two log lines, summed on the device as one tensor and reduced
across processes once per logged step (one collective, one host sync), not once per metric per micro-batch."""

from __future__ import annotations

import torch


class MetricWindow:
    """Sums each micro-batch's metrics (``{name: 0-d tensor}``, the same names every micro-batch of a run) until
    :meth:`mean` is asked for; the sums are float64 where the device has it, so the logged mean does not depend
    on how many micro-batches a window holds."""

    def __init__(self):
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        if self.names is None:
            self.names = list(metrics)
        elif set(metrics) != set(self.names):
            raise ValueError(f"a micro-batch's metrics {sorted(metrics)} differ from the window's {sorted(self.names)}")
        values = torch.stack([metrics[name].detach().reshape(()).float() for name in self.names])
        dtype = torch.float32 if values.device.type == "mps" else torch.float64
        values = values.to(dtype)
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1

    def mean(self, accelerator) -> dict[str, float]:
        """The window's mean of each metric over its micro-batches and over the processes; the window restarts.
        Every process must call it (it is a collective)."""
        if self.sums is None:
            return {}
        means = accelerator.reduce(self.sums / self.count, "mean").tolist()
        record = dict(zip(self.names, means))
        self.sums, self.count = None, 0
        return record
