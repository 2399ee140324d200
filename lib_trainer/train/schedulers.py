"""Learning-rate schedules from `training.lr_scheduler`, built by diffusers' `get_scheduler`.

diffusers returns a `LambdaLR`, so its position lives in `state_dict()` (`last_epoch`) and resuming is:
rebuild the optimizer and scheduler exactly as before, then load both state dicts.
"""

from __future__ import annotations

import logging

import torch

from .optimizers import TrainingConfigError

log = logging.getLogger(__name__)

SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)

_WARMUP_FIELD = "training.lr_warmup_steps"


def resolve_warmup_steps(value: int | float | str, total_steps: int) -> int:
    """Warmup as steps: an int is a step count, a float in [0, 1) (or "10%") a fraction of `total_steps`."""
    if isinstance(value, bool):
        raise TrainingConfigError(_WARMUP_FIELD, f"expected a number of steps or a fraction, got {value!r}")
    if isinstance(value, str):
        value = _parse_warmup_text(value)
    if isinstance(value, float):
        if 0.0 <= value < 1.0:
            return int(value * total_steps)  # floor, like kohya
        if value >= 1.0 and value.is_integer():
            return int(value)
        raise TrainingConfigError(
            _WARMUP_FIELD,
            f"{value} is neither a step count nor a fraction; use whole steps (e.g. 100) or a fraction below 1 "
            "(e.g. 0.05 for 5% of training)",
        )
    if not isinstance(value, int) or value < 0:
        raise TrainingConfigError(_WARMUP_FIELD, f"must be 0 or more steps, got {value!r}")
    return value


def _parse_warmup_text(text: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped[:-1]) / 100.0 if stripped.endswith("%") else float(stripped)
    except ValueError:
        raise TrainingConfigError(
            _WARMUP_FIELD,
            f"{text!r} is not a number; use steps (100), a fraction (0.05) or a percentage (5%)",
        ) from None


def build_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The named schedule over `total_steps` optimizer steps; call `.step()` once per optimizer step."""
    from diffusers.optimization import get_scheduler

    canonical = _canonical(name)
    if isinstance(num_cycles, float) and num_cycles.is_integer():
        num_cycles = int(num_cycles)  # 2.0 from a JSON/YAML spec
    _validate(canonical, total_steps, warmup_steps, num_cycles, power)
    if canonical == "constant" and warmup_steps > 0:
        # diffusers' "constant" ignores warmup; a user who asked for warmup wants it to happen.
        log.info(
            "training.lr_scheduler 'constant' with %d warmup steps: using constant_with_warmup", warmup_steps
        )
        canonical = "constant_with_warmup"
    return get_scheduler(
        canonical,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        num_cycles=num_cycles,
        power=power,
    )


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    if key not in SCHEDULERS:
        raise TrainingConfigError(
            "training.lr_scheduler", f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}"
        )
    return key


def _validate(name: str, total_steps: int, warmup_steps: int, num_cycles: int, power: float) -> None:
    if total_steps < 1:
        raise TrainingConfigError(
            "training.max_train_steps", f"training must run at least 1 step (got {total_steps})"
        )
    if warmup_steps < 0 or warmup_steps >= total_steps:
        raise TrainingConfigError(
            _WARMUP_FIELD,
            f"{warmup_steps} warmup steps must be fewer than the {total_steps} training steps; "
            "lower the warmup or train for longer",
        )
    bad_cycles = isinstance(num_cycles, bool) or not isinstance(num_cycles, int) or num_cycles < 1
    if name == "cosine_with_restarts" and bad_cycles:
        raise TrainingConfigError(
            "training.lr_scheduler_num_cycles", f"must be a whole number of 1 or more (got {num_cycles!r})"
        )
    if name == "polynomial" and not power > 0:
        raise TrainingConfigError("training.lr_scheduler_power", f"must be greater than 0 (got {power!r})")
