"""Apply a kohya-layout LoRA file to diffusers modules, written independently of the trainer's exporter.

The WebUI's formula is W += up @ down * alpha / rank * strength, on modules named by kohya's convention
(the diffusers path with '.' -> '_' under `lora_unet_` / `lora_te_`, text encoders with a `text_model`
level). Tests use this to judge a LoRA as it comes back from the file, and `attach_trainer_state` to get
the model as the trainer held it, for comparison.

The modules are found by their diffusers paths. The WebUI instead converts an SD1 name to its own block
numbers assuming SD1's two ResNets per level; for every real SD1 checkpoint that is the same module
(tests/test_host_lora_load.py: every key found), but the toy UNet has one per level, so the real WebUI
cannot place a toy LoRA's down_blocks_1 / up_blocks modules (docs/quality.md, "The toy model in a real
WebUI"). Here that is deliberate: the file, not the host's name arithmetic, is what is judged.
"""

from __future__ import annotations

import torch

from lib_trainer.train.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, load_lora_state_dict


def diffusers_targets(module: torch.nn.Module, prefix: str, add_text_model: bool) -> dict[str, torch.Tensor]:
    """kohya name -> weight tensor of every Linear/Conv2d in `module`."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            path = ("text_model." + name) if add_text_model and not name.startswith("text_model.") else name
            out[prefix + path.replace(".", "_")] = m.weight.data
    return out


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
