"""Apply a kohya-layout LoRA file to a base model, written independently of the trainer's exporter.

The WebUI's formula is W += up @ down * alpha / rank * strength. Modules are found as the WebUI finds them:
a UNet module named by its LDM path (`lora_unet_input_blocks_4_1_proj_in`: SDXL, and SD1/SD2 UNets not
numbered like SD's, such as the toy model) is the checkpoint's own tensor of that path, merged before the
UNet is built from the file; one named by its diffusers path (`lora_unet_down_blocks_...`: SD1/SD2 UNets
with SD's block numbers) and a text-encoder module (`lora_te_text_model_...`) is the diffusers module of that
path. Tests use this to judge a LoRA as it comes back from the file, and `attach_trainer_state` to get the
model as the trainer held it, for comparison.

For a diffusers-named SD1/SD2 module the WebUI instead computes the LDM block from the name with SD's
fixed arithmetic; the exporter writes diffusers names only for UNets where that arithmetic is right
(tests/test_kohya_keys.py checks it against the WebUI's rules, tests/test_host_lora_load.py in a real
WebUI). The toy model's LoRAs in a real WebUI: tests/test_host_toy_model.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lib_trainer.models.checkpoint_io import load_state_dict
from lib_trainer.models.ldm_layout import UNET_PREFIX
from lib_trainer.models.loader import BaseModel, build_unet, load_base_model
from lib_trainer.train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, load_lora_state_dict


def diffusers_targets(module: torch.nn.Module, prefix: str, add_text_model: bool) -> dict[str, torch.Tensor]:
    """kohya name -> weight tensor of every Linear/Conv2d in `module`."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            path = ("text_model." + name) if add_text_model and not name.startswith("text_model.") else name
            out[prefix + path.replace(".", "_")] = m.weight.data
    return out


def ldm_unet_targets(file_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya name -> the checkpoint's own UNet weight, for modules named by their LDM path (the WebUI's
    `lora_unet` -> `diffusion_model` lookup)."""
    return {
        "lora_unet_" + key[len(UNET_PREFIX) : -len(".weight")].replace(".", "_"): value
        for key, value in file_state.items()
        if key.startswith(UNET_PREFIX) and key.endswith(".weight")
    }


def text_encoder_prefixes(family: str) -> list[str]:
    return ["lora_te1_", "lora_te2_"] if family == "sdxl" else ["lora_te_"]


def merged_base_model(
    checkpoint: Path, lora: dict[str, torch.Tensor], strength: float = 1.0
) -> tuple[BaseModel, set[str]]:
    """The base model with the LoRA merged in as the WebUI merges it (see the module docstring), and the
    names of the LoRA modules that matched nothing."""
    base = load_base_model(checkpoint)
    file_state, _ = load_state_dict(checkpoint)
    ldm_targets = ldm_unet_targets(file_state)
    ldm_part = {k: v for k, v in lora.items() if k.split(".", 1)[0] in ldm_targets}
    if ldm_part:
        apply_kohya(ldm_part, ldm_targets, strength)
        base.unet = build_unet(file_state, base.arch.unet_config)
    targets = diffusers_targets(base.unet, "lora_unet_", add_text_model=False)
    for prefix, encoder in zip(text_encoder_prefixes(base.arch.family), base.text_encoders, strict=True):
        targets.update(diffusers_targets(encoder, prefix, add_text_model=True))
    unmatched = apply_kohya({k: v for k, v in lora.items() if k not in ldm_part}, targets, strength)
    return base, unmatched


def apply_kohya(lora: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], strength: float) -> set[str]:
    """Merge every LoRA module into its target weight in place; returns the module names with no target."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        prefix, rest = key.split(".", 1)
        groups.setdefault(prefix, {})[rest] = value
    unmatched = set()
    for prefix, g in groups.items():
        if prefix not in targets:
            unmatched.add(prefix)
            continue
        weight = targets[prefix]
        down, up = g["lora_down.weight"].float(), g["lora_up.weight"].float()
        scale = g["alpha"].item() / down.shape[0] * strength
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale
        weight += delta.to(weight.dtype)
    return unmatched


def attach_trainer_state(base, state: dict[str, torch.Tensor], rank: int, alpha: float) -> None:
    """The model as the trainer held it: peft LoRA layers on `base` loaded from the job's
    state/lora.safetensors (`unet/...`, `te0/...` keys); the reference an exported file is compared with."""
    add_lora(base.unet, UNET_TARGETS, rank, alpha)
    load_lora_state_dict(base.unet, {k[5:]: v for k, v in state.items() if k.startswith("unet/")})
    for i, encoder in enumerate(base.text_encoders):
        prefix = f"te{i}/"
        if any(k.startswith(prefix) for k in state):
            add_lora(encoder, TEXT_ENCODER_TARGETS, rank, alpha)
            load_lora_state_dict(
                encoder, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
