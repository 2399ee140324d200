"""Apply a kohya-layout LoRA file to diffusers modules, written independently of the trainer's exporter.

The WebUI's formula is W += up @ down * alpha / rank * strength, on modules named by kohya's convention
(the diffusers path with '.' -> '_' under `lora_unet_` / `lora_te_`, text encoders with a `text_model`
level). Tests use this to judge a LoRA as it comes back from the file, not as the trainer held it.
"""

from __future__ import annotations

import torch


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
