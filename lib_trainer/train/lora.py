"""LoRA layers through peft, on exactly the modules kohya's `networks.lora` trains.

The WebUI loads a LoRA by module name, so which modules we train decides whether every key of the exported
file finds a home. kohya trains the Linear and 1x1-conv layers inside the UNet's transformer blocks (q, k,
v, out, feed-forward, proj_in/out) and the text encoders' attention and MLP linears; we match that set.
"""

from __future__ import annotations

import weakref

import torch

ADAPTER = "default"
UNET_TARGETS = (
    r".*attentions\.\d+\.(proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
    r"|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2))"
)
TEXT_ENCODER_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"


def add_lora(
    model: torch.nn.Module, target_regex: str, rank: int, alpha: float, dropout: float = 0.0
) -> None:
    """Inject LoRA layers in place; kohya's init (A: kaiming-uniform, B: zeros) is peft's default too."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_regex,
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    _LORA_LAYERS.pop(model, None)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)


_LORA_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """`lora_modules(model)`'s layers, found once per model: the prior's base-model pass switches them off and
    on in every step, and a walk over all modules (1400 in the toy model, several thousand in SDXL) costs
    milliseconds each time. `add_lora` renews the list of the model it adds to."""
    layers = _LORA_LAYERS.get(model)
    if layers is None:
        layers = list(lora_modules(model).values())
        _LORA_LAYERS[model] = layers
    return layers


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """module path -> peft LoRA layer, for every layer that carries our adapter."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors only, detached copies on the CPU (for resume states)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if ".lora_" in n}


def load_lora_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in params if ".lora_" in n and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise ValueError(
            f"saved LoRA state does not match this model (missing {missing[:3]}, unknown {unknown[:3]})"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
