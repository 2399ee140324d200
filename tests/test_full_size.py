"""A full-size (random-weight) SD1.5 checkpoint through the whole trainer: real widths, real head counts,
kohya's module counts, and an exported file whose every key lands on a real module."""

from __future__ import annotations

import pytest
import torch
from conftest import base_spec
from safetensors.torch import load_file

from lib_trainer.models.loader import load_base_model
from lib_trainer.models.tiny import write_random_checkpoint
from lib_trainer.spec import spec_from_dict
from lib_trainer.train.events import read_events
from lib_trainer.train.job import run_job


@pytest.mark.slow
def test_full_size_sd15_trains_and_exports_every_module(tmp_path, tiny_dataset):
    model = write_random_checkpoint(
        tmp_path / "sd15-full.safetensors", "sd1", size="full", dtype=torch.float16
    )
    out = tmp_path / "Lora"
    spec = base_spec(
        model, tiny_dataset, out, network={"train_text_encoder": True}, training={"max_steps": 1}
    )
    code = run_job(spec_from_dict(spec), tmp_path / "job")
    events = read_events(tmp_path / "job" / "events.jsonl")
    assert code == 0, events[-1]
    lora = load_file(str(out / "t.safetensors"))
    modules = {k.split(".", 1)[0] for k in lora}
    assert sum(m.startswith("lora_unet_") for m in modules) == 192
    assert sum(m.startswith("lora_te_") for m in modules) == 72

    base = load_base_model(model)
    assert base.unet.config.attention_head_dim == 8 and base.text_encoders[0].config.num_attention_heads == 12
    names = {}
    for name, m in base.unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            names["lora_unet_" + name.replace(".", "_")] = m.weight
    for name, m in base.text_encoders[0].named_modules():
        if isinstance(m, torch.nn.Linear):
            names["lora_te_text_model_" + name.replace(".", "_")] = m.weight
    for module in modules:
        down, up = lora[f"{module}.lora_down.weight"], lora[f"{module}.lora_up.weight"]
        assert (up.flatten(1) @ down.flatten(1)).shape == names[module].flatten(1).shape, module
    plan = next(e for e in events if e["type"] == "info" and "total_steps" in e)
    assert plan["total_steps"] == 1
