"""Where vlmdpo's DPO step spends its time: wall time per phase (timers around the functions the step calls)
and the heaviest torch operators (``torch.profiler``, step 2), from ``bench_dpo.py --profile``. The phase
timers run from step 3 on, so the profiler's own overhead stays out of them."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

PHASES = ("image features (once, shared)", "policy: decoder forward", "policy: LM head + log-softmax",
          "reference: decoder forward", "reference: LM head + log-softmax", "backward", "optimizer",
          "collate, loss, logging (rest)")


class StepProfile:
    """Install timers on the step's functions; ``report`` prints the per-phase share of the timed steps."""

    def __init__(self, clock, operator_steps: int = 1):
        self.clock, self.seconds, self.calls = clock, defaultdict(float), defaultdict(int)
        self.operator_steps, self.profiler, self.model_calls = operator_steps, None, 0

    def _timed(self, owner, name: str, phase):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            label = phase() if callable(phase) else phase
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if len(self.clock.starts) >= 3:  # timed steps after the one the operator profile slows down
                    self.seconds[label] += time.perf_counter() - start
                    self.calls[label] += 1

        setattr(owner, name, wrapper)

    def install(self):
        import accelerate
        import accelerate.optimizer

        import vlmdpo.forward.fast as fast_logps
        import vlmdpo.train.step as step_module

        def model_label(suffix):
            def label():
                return ("policy: " if self.model_calls % 2 == 0 else "reference: ") + suffix
            return label

        original_packed = step_module.packed_completion_logps

        def packed(*args, **kwargs):  # count calls: policy first, then reference
            try:
                return original_packed(*args, **kwargs)
            finally:
                self.model_calls += 1

        step_module.packed_completion_logps = packed
        self._timed(step_module, "shared_image_features", "image features (once, shared)")
        self._timed(fast_logps, "head_logps", model_label("LM head + log-softmax"))
        self._timed(step_module, "packed_completion_logps", model_label("decoder forward"))
        self._timed(accelerate.Accelerator, "backward", "backward")
        self._timed(accelerate.optimizer.AcceleratedOptimizer, "step", "optimizer")
        self._start_operator_profile()

    def _start_operator_profile(self):
        import vlmdpo.train.loop as train_module

        step = train_module.dpo_step
        profile = self

        def profiled_step(*args, **kwargs):
            steps = len(profile.clock.starts) + 1  # this function wraps the clock's: its step is about to begin
            if steps == 2 and profile.profiler is None:
                profile.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                profile.profiler.__enter__()
            elif steps == 2 + profile.operator_steps and profile.profiler is not None and profile.running:
                profile.profiler.__exit__(None, None, None)
                profile.running = False
            return step(*args, **kwargs)

        self.running = True
        train_module.dpo_step = profiled_step

    def report(self, stream):
        starts = self.clock.starts
        if len(starts) < 4:
            print("== --profile needs at least 4 steps ==", file=stream)
            return
        step_seconds = (starts[-1] - starts[2]) / (len(starts) - 3)  # steps 3 .. last - 1
        covered = len(starts) - 2  # the timers ran in steps 3 .. last
        per_step = {phase: value / covered for phase, value in self.seconds.items()}
        for kind in ("policy", "reference"):
            per_step[f"{kind}: decoder forward"] = (per_step.get(f"{kind}: decoder forward", 0.0)
                                                    - per_step.get(f"{kind}: LM head + log-softmax", 0.0))
        per_step["collate, loss, logging (rest)"] = max(0.0, step_seconds - sum(per_step.values()))
        print(f"== where vlmdpo's step time goes ({step_seconds:.2f} s/step) ==", file=stream)
        for phase in PHASES:
            value = per_step.get(phase, 0.0)
            print(f"  {phase:<36}{value:>8.3f} s/step {100 * value / step_seconds:>6.1f}%", file=stream)
        if self.profiler is not None:
            if self.running:
                self.profiler.__exit__(None, None, None)
            print("== heaviest operators (one step, self CPU time) ==", file=stream)
            print(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=stream)
