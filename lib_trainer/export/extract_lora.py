"""Extract a LoRA from a fine-tuned model: the weight difference to the base, cut to a rank by SVD.

For every layer a LoRA of ours trains (the same set kohya trains: attention and feed-forward linears and the
1x1 projections of the UNet's transformer blocks, the text encoders' attention and MLP linears), the
difference W_tuned - W_base is factored as up @ down with a truncated SVD (up = U*S, down = Vh, alpha = rank,
so the WebUI applies it at scale 1), and written with kohya's names. At full rank the LoRA reproduces those
layers exactly; a fine-tune's changes to other layers (ResNet convolutions, norms) are not representable
and are left out, as kohya's extract script does by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.ldm_layout import UNetLayout
from ..train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
from .kohya_keys import text_encoder_prefix_name, unet_prefix_name

MIN_DIFF = 1e-7  # a layer whose largest change is below this is unchanged (kohya skips those too)


@dataclass
class ExtractedLayer:
    name: str  # kohya name
    path: str  # module path in its model
    up: torch.Tensor
    down: torch.Tensor
    rank: int
    kept: float  # share of the difference's energy (squared singular values) the rank keeps


def _targets(model: torch.nn.Module, pattern: str) -> dict[str, torch.nn.Module]:
    regex = re.compile(pattern)
    return {
        name: m
        for name, m in model.named_modules()
        if regex.fullmatch(name) and isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    }


def _factor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    matrix = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = max(1, min(rank, s.numel()))
    energy = float((s[:r] ** 2).sum() / (s**2).sum().clamp_min(1e-30))
    up, down = u[:, :r] * s[:r], vh[:r]
    if delta.dim() == 4:  # 1x1 convolutions: kohya's 4-D LoRA shapes
        up, down = up.reshape(up.shape[0], r, 1, 1), down.reshape(r, *delta.shape[1:])
    return up.contiguous(), down.contiguous(), r, energy


def _pairs(base: torch.nn.Module, tuned: torch.nn.Module, pattern: str):
    tuned_layers = _targets(tuned, pattern)
    for path, layer in _targets(base, pattern).items():
        other = tuned_layers.get(path)
        if other is None or other.weight.shape != layer.weight.shape:
            raise ValueError(f"the fine-tuned model has no layer {path} shaped like the base model's")
        yield path, layer.weight.detach(), other.weight.detach()


@torch.no_grad()
def extract_lora(
    base_unet: torch.nn.Module,
    tuned_unet: torch.nn.Module,
    base_encoders: list[torch.nn.Module],
    tuned_encoders: list[torch.nn.Module],
    *,
    family: str,
    unet_config: dict,
    rank: int,
) -> list[ExtractedLayer]:
    """The LoRA layers of a fine-tune (pass no encoders to leave the text encoders out)."""
    if rank < 1:
        raise ValueError(f"the rank must be at least 1, not {rank}")
    layout = UNetLayout.from_config(unet_config)
    jobs = [
        (p, b, t, unet_prefix_name(p, family, layout))
        for p, b, t in _pairs(base_unet, tuned_unet, UNET_TARGETS)
    ]
    for index, (base, tuned) in enumerate(zip(base_encoders, tuned_encoders, strict=True)):
        jobs += [
            (p, b, t, text_encoder_prefix_name(p, family, index))
            for p, b, t in _pairs(base, tuned, TEXT_ENCODER_TARGETS)
        ]
    out = []
    for path, before, after, name in jobs:
        delta = after.float() - before.to(after.device).float()  # on the tuned model's device (GPU: fast SVD)
        if float(delta.abs().max()) < MIN_DIFF:
            continue
        up, down, r, kept = _factor(delta, rank)
        out.append(ExtractedLayer(name, path, up.cpu(), down.cpu(), r, kept))
    return out


def kohya_tensors(layers: list[ExtractedLayer]) -> dict[str, torch.Tensor]:
    """The layers as a kohya LoRA state dict (alpha = rank: scale 1)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        tensors[f"{layer.name}.lora_up.weight"] = layer.up
        tensors[f"{layer.name}.lora_down.weight"] = layer.down
        tensors[f"{layer.name}.alpha"] = torch.tensor(float(layer.rank))
    return tensors


def extracted_metadata(arch, base_name: str, tuned_name: str, rank: int, title: str) -> dict[str, str]:
    """What an extracted LoRA says about itself: the base it belongs to (the WebUI sorts LoRAs by it)."""
    from .metadata import base_model_version, modelspec_architecture

    v_prediction = arch.prediction_type == "v_prediction"
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": base_model_version(arch.family, v_prediction),
        "ss_v2": str(arch.family == "sd2"),
        "ss_sd_model_name": base_name,
        "ss_training_comment": f"extracted from {tuned_name} (difference to {base_name})",
        "modelspec.architecture": modelspec_architecture(arch.family, v_prediction),
        "modelspec.title": title,
    }


def extract_lora_file(
    base_path: Path,
    tuned_path: Path,
    out: Path,
    *,
    rank: int,
    text_encoders: bool = True,
    precision: str = "fp16",
) -> tuple[Path, list[ExtractedLayer]]:
    """Extract from two single-file checkpoints of the same architecture and save a kohya LoRA (never
    overwriting a file). The metadata says what it was extracted from, so the WebUI sorts it to the right base."""
    from ..models.arch import ModelFormatError
    from ..models.loader import load_base_model
    from .lora_file import save_lora

    base, tuned = load_base_model(base_path), load_base_model(tuned_path)
    if (base.arch.family, base.arch.unet_config) != (tuned.arch.family, tuned.arch.unet_config):
        raise ModelFormatError(
            f"{Path(tuned_path).name} is not the same kind of model as {Path(base_path).name}; "
            "extract from a fine-tune of that base"
        )
    layers = extract_lora(
        base.unet,
        tuned.unet,
        base.text_encoders if text_encoders else [],
        tuned.text_encoders if text_encoders else [],
        family=base.arch.family,
        unet_config=base.arch.unet_config,
        rank=rank,
    )
    if not layers:
        raise ValueError(f"{Path(tuned_path).name} has the same weights as the base in every LoRA layer")
    metadata = extracted_metadata(
        base.arch, Path(base_path).name, Path(tuned_path).name, rank, Path(out).stem
    )
    path = save_lora(out, kohya_tensors(layers), metadata, precision)
    return path, layers
