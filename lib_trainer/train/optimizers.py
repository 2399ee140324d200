"""Optimizer construction from the job spec's `training.optimizer` / `training.optimizer_args`.

The libraries do the optimizing; this module only picks the class, fills in the settings kohya users
expect, and turns every mistake a user can make into a `TrainingConfigError` that names the job field and
says what to do, instead of a stack trace from deep inside an optimizer's constructor.
"""

from __future__ import annotations

import ast
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy", "Adafactor")

# Constructor parameters a user must not set through optimizer_args: the params and learning rate come from
# other fields, the rest are library internals.
_NOT_USER_ARGS = {"self", "params", "lr", "args", "differentiable", "fsdp_in_use"}

# Adafactor's own step-size rules would silently replace training.learning_rate and training.lr_scheduler.
_ADAFACTOR_FIXED = {"relative_step": False, "scale_parameter": False, "warmup_init": False}
_ADAFACTOR_LOCKED = ("relative_step", "warmup_init")

# prodigyopt's own defaults (no bias correction, no warm-up safeguard, no weight decay) are tuned for
# classifiers; its authors recommend these for diffusion models. Measured on the toy world
# (docs/quality.md): with prodigyopt's defaults a style LoRA's step size ran away (loss 0.1 -> 0.6-1.2, the
# model drew noise whatever the prompt); with these it trained normally. A user's optimizer_args win.
PRODIGY_DIFFUSION_DEFAULTS = {"use_bias_correction": True, "safeguard_warmup": True, "weight_decay": 0.01}

_ARGS_ATTR = "_lib_trainer_args"


class TrainingConfigError(ValueError):
    """A training setting the user chose that cannot work; `field` names the job-spec field to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def canonical_optimizer_name(name: str) -> str:
    """Map any capitalisation ("adamw8bit") to the canonical name, or explain the valid choices."""
    lookup = {n.lower(): n for n in OPTIMIZERS}
    canonical = lookup.get(str(name).strip().lower())
    if canonical is None:
        raise TrainingConfigError(
            "training.optimizer", f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}"
        )
    return canonical


def optimizer_warnings(name: str, lr: float) -> list[str]:
    """Advice for settings that work but are probably not what the user meant (shown as events/logs)."""
    if canonical_optimizer_name(name) == "Prodigy" and lr < 0.1:
        return [
            f"training.learning_rate is {lr:g}, but Prodigy normally uses learning_rate 1.0: it finds the step "
            "size itself and the learning rate only scales it. Set training.learning_rate to 1.0 unless you "
            "mean to damp it."
        ]
    return []


def build_optimizer(
    name: str,
    param_groups: list[dict],
    *,
    lr: float,
    device_type: str,
    extra_args: dict | None = None,
) -> torch.optim.Optimizer:
    """Build the named optimizer over `param_groups` (each with "params" and "lr")."""
    canonical = canonical_optimizer_name(name)
    param_groups = [dict(group, params=list(group["params"])) for group in param_groups]  # may be generators
    _check_learning_rates(lr, param_groups)
    if canonical == "AdamW8bit":
        _check_8bit_device(device_type)  # before anything is imported or allocated
    cls = _optimizer_class(canonical)
    user_args = _validate_extra_args(canonical, cls, extra_args or {})
    kwargs = _default_args(canonical, param_groups, device_type, user_args) | user_args
    if canonical == "Prodigy":
        _check_prodigy_groups(lr, param_groups)
    for message in optimizer_warnings(canonical, lr):
        log.warning(message)
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs)
    except (TypeError, ValueError) as exc:
        if not user_args:
            raise
        raise TrainingConfigError(
            "training.optimizer_args", f"{canonical} rejected these settings ({exc}); fix or remove them"
        ) from exc
    setattr(optimizer, _ARGS_ATTR, {k: v for k, v in kwargs.items() if k != "fused"})
    return optimizer


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """kohya's `ss_optimizer` string: "module.Class(key=value,...)" with the settings this trainer chose."""
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__name__}"
    args = getattr(optimizer, _ARGS_ATTR, {})
    return f"{name}({','.join(f'{k}={v}' for k, v in args.items())})" if args else name


def _check_learning_rates(lr: float, param_groups: list[dict]) -> None:
    if not lr > 0:
        raise TrainingConfigError("training.learning_rate", f"must be greater than 0 (got {lr})")
    for group in param_groups:
        if group.get("lr", lr) < 0:
            raise TrainingConfigError(
                "training.text_encoder_lr", f"learning rates cannot be negative (got {group['lr']})"
            )


def _check_8bit_device(device_type: str) -> None:
    if device_type != "cuda":
        raise TrainingConfigError(
            "training.optimizer",
            "AdamW8bit needs an NVIDIA GPU (bitsandbytes 8-bit optimizers run on CUDA only). "
            "Use AdamW on CPU, or set training.device to cuda.",
        )


def _check_prodigy_groups(lr: float, param_groups: list[dict]) -> None:
    # prodigyopt raises at the first step otherwise; fail before the models are loaded instead.
    rates = {group.get("lr", lr) for group in param_groups} - {0.0}
    if len(rates) > 1:
        raise TrainingConfigError(
            "training.text_encoder_lr",
            "Prodigy adapts one step size for the whole network and cannot use a separate text-encoder "
            f"learning rate (got {sorted(rates)}). Leave training.text_encoder_lr empty or set it equal to "
            "training.learning_rate.",
        )


def _optimizer_class(canonical: str) -> Callable[..., torch.optim.Optimizer]:
    if canonical == "AdamW":
        return torch.optim.AdamW
    if canonical == "AdamW8bit":
        try:
            import bitsandbytes
        except Exception as exc:  # a broken CUDA setup surfaces as all kinds of errors
            raise TrainingConfigError(
                "training.optimizer",
                f"AdamW8bit needs the bitsandbytes package, which could not be loaded ({exc}). "
                "Use AdamW, or repair the bitsandbytes install.",
            ) from exc
        return bitsandbytes.optim.AdamW8bit
    if canonical == "Prodigy":
        from prodigyopt import Prodigy

        return Prodigy
    from transformers.optimization import Adafactor

    return Adafactor


def _validate_extra_args(canonical: str, cls: Callable[..., Any], extra_args: dict) -> dict:
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in _NOT_USER_ARGS]
    out = {}
    for key, value in extra_args.items():
        field = f"training.optimizer_args.{key}"
        if key == "lr":
            raise TrainingConfigError(field, "set the learning rate with training.learning_rate instead")
        if key not in allowed:
            raise TrainingConfigError(
                field, f"{canonical} has no setting {key!r}; allowed settings: {', '.join(sorted(allowed))}"
            )
        value = _coerce(value)
        if canonical == "Adafactor" and key in _ADAFACTOR_LOCKED and value:
            raise TrainingConfigError(
                field,
                "this trainer drives Adafactor with training.learning_rate and training.lr_scheduler, so "
                f"{key} must stay False; remove it",
            )
        out[key] = value
    return out


def _coerce(value: Any) -> Any:
    """Accept kohya-style text values ("0.01", "(0.9, 0.99)") and JSON lists where tuples are expected."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return tuple(value) if isinstance(value, list) else value


def _default_args(canonical: str, param_groups: list[dict], device_type: str, user_args: dict) -> dict:
    if canonical == "AdamW":
        kwargs: dict[str, Any] = {"weight_decay": 0.01}
        if _fused_ok(param_groups, device_type) and not {"fused", "foreach"} & user_args.keys():
            kwargs["fused"] = True
        return kwargs
    if canonical == "Adafactor":
        return dict(_ADAFACTOR_FIXED)
    if canonical == "Prodigy":
        return dict(PRODIGY_DIFFUSION_DEFAULTS)
    return {}


def _fused_ok(param_groups: list[dict], device_type: str) -> bool:
    """torch's fused AdamW kernel: one launch per step on CUDA; on the CPU (torch 2.4 and later) one pass
    instead of a loop over the parameters (a toy LoRA's 140 tensors: 0.7 ms a step instead of 3.7 ms).
    Only for floating tensors all on that device; the host's older torch has no CPU kernel."""
    params = [p for g in param_groups for p in g["params"]]
    if not params or not all(p.dtype.is_floating_point for p in params):
        return False
    if device_type == "cuda":
        return all(p.is_cuda for p in params)
    if device_type == "cpu":
        return _has_fused_cpu_adamw() and all(p.device.type == "cpu" for p in params)
    return False


def _has_fused_cpu_adamw() -> bool:
    return torch.__version__ >= "2.4"  # torch's TorchVersion compares as a version, not as text
