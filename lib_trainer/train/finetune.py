"""The full fine-tune (mode "dreambooth"): the model's own weights are trained and saved as a checkpoint.

Where a LoRA job adds small layers and keeps the model frozen, this trains the UNet (and optionally the text
encoder) in place. The trained modules keep fp32 master weights under bf16/fp16 autocast, as kohya's and
diffusers' fine-tune scripts do without --full_bf16: that is what keeps small updates (learning rates of
1e-6) from vanishing in bf16 rounding, and an SD 1.5 fine-tune with 8-bit AdamW and gradient checkpointing
still fits a 24 GB GPU. An optional EMA (diffusers' EMAModel, with its warm-up) is what gets saved and
sampled. Checkpoints are written by `export.checkpoint_file` in the base file's own layout.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator

import torch

from ..spec.finetune_rules import high_learning_rate, saved_checkpoints
from ..spec.schema import FULL_FINETUNE


def is_full_finetune(spec) -> bool:
    return spec.mode == FULL_FINETUNE


def trainable_components(ctx) -> dict[str, torch.nn.Module]:
    """The modules this job trains, by the names its resume state uses (`unet`, `te0`, `te1`)."""
    comps = {}
    if ctx.spec.network.train_unet:
        comps["unet"] = ctx.base.unet
    if ctx.spec.network.train_text_encoder:
        for i, encoder in enumerate(ctx.base.text_encoders):
            comps[f"te{i}"] = encoder
    return comps


def finetune_param_groups(ctx) -> list[dict]:
    """Make the trained modules trainable in fp32 and return their optimizer groups (UNet lr, TE lr)."""
    spec = ctx.spec
    groups = []
    checkpointing = spec.training.gradient_checkpointing
    for name, module in trainable_components(ctx).items():
        module.to(torch.float32).requires_grad_(True)
        if name == "unet":
            lr = spec.training.learning_rate
            if checkpointing:
                module.enable_gradient_checkpointing()
        else:
            lr = spec.training.text_encoder_lr or spec.training.learning_rate
            if checkpointing:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        groups.append({"params": [p for p in module.parameters() if p.requires_grad], "lr": lr})
    return groups


def learning_rate_warnings(spec) -> list[str]:
    rate = high_learning_rate(spec)
    if rate is None:
        return []
    return [
        f"the learning rate {rate:g} is high for a full fine-tune, which changes every weight of the "
        "model; 1e-6 to 5e-6 is usual (training.learning_rate). A LoRA's rates burn a checkpoint quickly."
    ]


def make_ema(ctx):
    """diffusers' EMAModel over every trained parameter, on the training device (None when off)."""
    if not ctx.spec.finetune.ema:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(
        ctx.trainable_params, decay=ctx.spec.finetune.ema_decay, foreach=ctx.device.type == "cuda"
    )


@contextlib.contextmanager
def ema_weights(ctx) -> Iterator[None]:
    """Inside: the model holds the EMA weights (what is saved and sampled); the trained ones come back after."""
    ema = getattr(ctx, "ema", None)
    if ema is None:
        yield
        return
    ema.store(ctx.trainable_params)
    ema.copy_to(ctx.trainable_params)
    try:
        yield
    finally:
        ema.restore(ctx.trainable_params)


def weights_state(ctx) -> dict[str, torch.Tensor]:
    """The trained modules' full weights on the CPU, for the resume state."""
    out = {}
    for comp, module in trainable_components(ctx).items():
        out.update({f"{comp}/{k}": v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()})
    return out


def load_weights_state(ctx, tensors: dict[str, torch.Tensor]) -> None:
    for comp, module in trainable_components(ctx).items():
        prefix = f"{comp}/"
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"the saved state does not match this model's {comp} (missing {missing[:3]}, "
                f"unknown {unexpected[:3]}); start the job again instead of resuming"
            )


_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def disk_space_warning(spec, checkpoint, output_dir, num_epochs: int) -> str | None:
    """Each checkpoint is as large as the base model: say so before hours of training, not at the save."""
    from ..models.checkpoint_io import read_safetensors_header

    if checkpoint.suffix.lower() != ".safetensors":
        return None
    shapes, _ = read_safetensors_header(checkpoint)
    size = sum(math.prod(shape) for shape in shapes.values()) * _BYTES[spec.output.save_precision]
    count = saved_checkpoints(spec, num_epochs)
    folder = output_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free >= count * size:
        return None
    return (
        f"{count} checkpoint(s) of {size / 2**30:.1f} GB each will be saved, but {output_dir} has only "
        f"{free / 2**30:.1f} GB free; free some space or save fewer (output.save_every_epochs)"
    )
