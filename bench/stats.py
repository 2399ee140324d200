"""Steady-state numbers from a probe result: the same arithmetic for every trainer.

The first steps of any run are slow (allocator growth, cuDNN/SDPA autotuning, lazy initialisation), and
epoch boundaries add the odd long step; the median of the step intervals after a warm-up is what a user
sees over a long run. The mean over the same window is kept too, so a trainer whose spikes are frequent
(data loading at each epoch, say) cannot hide behind the median.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from itertools import pairwise


class NotEnoughSteps(ValueError):
    pass


@dataclass(frozen=True)
class StepStats:
    steps: int  # optimizer steps the probe saw
    measured_intervals: int  # intervals after the warm-up that the numbers come from
    median_step_s: float
    mean_step_s: float
    p10_step_s: float
    p90_step_s: float
    it_per_s: float  # 1 / median
    images_per_s: float  # batch size / median
    time_to_first_step_s: float | None  # from the launcher's start of the process to the end of step 1

    def to_dict(self) -> dict:
        return asdict(self)


def intervals(step_times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(step_times)]


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def steady_state(
    step_times: list[float],
    batch_size: int,
    warmup: int,
    launch_to_probe_s: float | None = None,
) -> StepStats:
    """Statistics of the step intervals after skipping the first `warmup` steps.

    `step_times` are seconds since the probe started; `launch_to_probe_s` is how long the process took from
    the launcher's clock to the probe's start (None when unknown; the first step is then timed from the probe).
    """
    if len(step_times) < warmup + 2:
        raise NotEnoughSteps(
            f"{len(step_times)} steps recorded; need at least warm-up {warmup} + 2 for one measured interval"
        )
    measured = intervals(step_times)[warmup:]
    median = statistics.median(measured)
    first = step_times[0] + (launch_to_probe_s or 0.0)
    return StepStats(
        steps=len(step_times),
        measured_intervals=len(measured),
        median_step_s=median,
        mean_step_s=statistics.fmean(measured),
        p10_step_s=quantile(measured, 0.1),
        p90_step_s=quantile(measured, 0.9),
        it_per_s=1.0 / median,
        images_per_s=batch_size / median,
        time_to_first_step_s=first,
    )


def from_probe(probe: dict, batch_size: int, warmup: int) -> StepStats:
    """`steady_state` of a probe JSON (see probe.py)."""
    launch = probe.get("launch_time")
    offset = probe["probe_start_time"] - launch if launch else None
    return steady_state(probe["step_times"], batch_size, warmup, offset)


def flop_utilisation(flops_per_step: float | None, it_per_s: float, peak_flops: float | None) -> float | None:
    """Achieved / peak: model FLOPs of one step (no recomputation counted) times steps per second."""
    if not flops_per_step or not peak_flops:
        return None
    return flops_per_step * it_per_s / peak_flops
