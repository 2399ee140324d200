"""UNet FLOPs of one training step, and the bf16 peak of known GPUs: for the FLOP-utilisation column.

The count runs on the `meta` device (shapes only, no memory, a second or two even for SDXL at 1024 px) with
torch's FlopCounterMode, on the UNet built from the benchmark's own checkpoint with our LoRA layers on it,
frozen base and trainable LoRA as in training. So the backward pass counts the input gradients through
every layer and the weight gradients of the LoRA only, which is what a LoRA step computes. kohya runs its
own UNet code (library/original_unet.py) of the same architecture: the same model FLOPs. Recomputation
by gradient checkpointing is not counted (model FLOPs utilisation, MFU); `recompute_flops` gives it.
"""

from __future__ import annotations

import re
from pathlib import Path

# Dense bf16 tensor-core peaks (FLOP/s, fp32 accumulate, no sparsity), from the vendors' datasheets.
# First match wins, so the more specific names come first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    (r"h100.*pcie", 756e12),
    (r"h100.*nvl", 835e12),
    (r"h100|h800", 989e12),  # SXM
    (r"h200", 989e12),
    (r"gh200", 989e12),
    (r"b200", 2250e12),
    (r"a100|a800", 312e12),
    (r"l40s", 362e12),
    (r"\bl4\b", 121e12),
    (r"\ba10\b", 125e12),
    (r"rtx 4090", 165e12),
    (r"rtx 3090", 71e12),
)


def peak_bf16_flops(device_name: str | None, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak in FLOP/s; None when the device is unknown (and no override given)."""
    if override_tflops:
        return override_tflops * 1e12
    if not device_name:
        return None
    name = device_name.lower()
    for pattern, peak in PEAK_BF16:
        if re.search(pattern, name):
            return peak
    return None


def _unet_inputs(config: dict, batch: int, resolution: int, device: str):
    import torch

    latent = resolution // 8
    x = torch.randn(batch, config.get("in_channels", 4), latent, latent, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    context = torch.randn(batch, 77, config["cross_attention_dim"], device=device)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device),
            "time_ids": torch.randn(batch, 6, device=device),
        }
    return x, t, context, kwargs


def unet_config(checkpoint: Path) -> dict:
    """The diffusers UNet config of a checkpoint, from its header alone (no tensor is read)."""
    from lib_trainer.models.arch import analyse_checkpoint
    from lib_trainer.models.checkpoint_io import read_safetensors_header

    shapes, metadata = read_safetensors_header(Path(checkpoint))
    return dict(analyse_checkpoint(shapes, metadata, Path(checkpoint)).unet_config)


def count_step_flops(config: dict, batch: int, resolution: int, rank: int = 32) -> dict:
    """FLOPs of one UNet forward and backward of a LoRA training step at (batch, resolution)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from lib_trainer.train.lora import UNET_TARGETS, add_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet.requires_grad_(False)
    add_lora(unet, UNET_TARGETS, rank, float(rank))
    x, t, context, kwargs = _unet_inputs(config, batch, resolution, "meta")
    with FlopCounterMode(display=False) as counter:
        out = unet(x, t, context, **kwargs).sample
        forward = counter.get_total_flops()
        out.float().square().mean().backward()
        total = counter.get_total_flops()
    return {"forward": forward, "backward": total - forward, "total": total, "recompute_flops": forward}


def step_flops(checkpoint: Path, batch: int, resolution: int, rank: int = 32) -> dict:
    return count_step_flops(unet_config(checkpoint), batch, resolution, rank)
