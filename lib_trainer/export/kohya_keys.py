"""Name trained LoRA layers the way kohya's sd-scripts does, so the WebUI's Lora loader matches every key.

kohya names SD1/SD2 UNet modules by their diffusers path, but SDXL UNet modules by their LDM path
(`input_blocks_4_1_...`), because it trains SDXL with its own LDM-shaped UNet; text encoders use the
transformers path with a `text_model` level. A key the host cannot match is silently ignored there, so the
mapping is tested against the real architectures' module names.

An SD1/SD2 UNet that is not numbered like SD's (a block-reduced distillation with one ResNet per level, the
quality tests' toy model) also gets LDM paths: A1111 decodes a diffusers SD name with SD's fixed block
arithmetic and would put its modules on the wrong blocks or drop them, while an LDM path it finds as it finds
SDXL's (`lora_unet_` -> `diffusion_model_`), and so do Forge, reForge and ComfyUI, whose key maps list every
`lora_unet_<LDM path>` of the loaded model.
"""

from __future__ import annotations

import torch

from ..models.ldm_layout import UNetLayout, unet_module_to_ldm
from ..train.lora import ADAPTER, lora_modules


def uses_ldm_names(family: str, layout: UNetLayout) -> bool:
    """SDXL always (kohya's convention); SD1/SD2 when the WebUI's SD block arithmetic would misplace them."""
    return family == "sdxl" or not layout.has_sd_block_numbers


def unet_prefix_name(path: str, family: str, layout: UNetLayout) -> str:
    if uses_ldm_names(family, layout):
        path = unet_module_to_ldm(path, layout)
    return "lora_unet_" + path.replace(".", "_")


def text_encoder_prefix_name(path: str, family: str, index: int) -> str:
    if not path.startswith("text_model."):
        path = "text_model." + path
    prefix = "lora_te" if family != "sdxl" else f"lora_te{index + 1}"
    return f"{prefix}_" + path.replace(".", "_")


def _export_module(layer, name: str, alpha: float, out: dict[str, torch.Tensor]) -> None:
    down = layer.lora_A[ADAPTER].weight.detach()
    up = layer.lora_B[ADAPTER].weight.detach()
    out[f"{name}.lora_down.weight"] = down.float().cpu().contiguous()
    out[f"{name}.lora_up.weight"] = up.float().cpu().contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(alpha))


def kohya_module_names(
    unet: torch.nn.Module | None,
    text_encoders: list[torch.nn.Module],
    family: str,
    unet_config: dict | None = None,
) -> dict[str, object]:
    """kohya name -> peft LoRA layer, for every trained layer of the given modules."""
    names: dict[str, object] = {}
    if unet is not None:
        layout = UNetLayout.from_config(unet_config if unet_config is not None else dict(unet.config))
        for path, layer in lora_modules(unet).items():
            names[unet_prefix_name(path, family, layout)] = layer
    for index, encoder in enumerate(text_encoders):
        for path, layer in lora_modules(encoder).items():
            names[text_encoder_prefix_name(path, family, index)] = layer
    return names


def export_kohya_state_dict(
    unet: torch.nn.Module | None,
    text_encoders: list[torch.nn.Module],
    family: str,
    alpha: float,
    unet_config: dict | None = None,
) -> dict[str, torch.Tensor]:
    """fp32 kohya-layout tensors for every LoRA layer; peft's Conv2d LoRA is already kohya's 4-D shape."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in kohya_module_names(unet, text_encoders, family, unet_config).items():
        _export_module(layer, name, alpha, out)
    return out
