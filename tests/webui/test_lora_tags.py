"""Prompt rewriting and value parsing for the LoRA NUM / LoRA STRENGTH plot axes (host-free)."""

from __future__ import annotations

import pytest

from lib_trainer.webui.lora_tags import (
    expand_num_values,
    families_with_epochs,
    missing_epochs_message,
    num_label,
    rewrite,
    trained_families,
)

NAMES = {"hero", "hero-000001", "hero-000002", "hero-000004", "style", "bg-000003"}


def test_num_values():
    assert expand_num_values("1, 2, 5") == ["1", "2", "5"]
    assert expand_num_values("000003, final") == ["3", "final"]
    assert expand_num_values("1-7 (+3)") == ["1", "4", "7"]
    assert expand_num_values("2-10 [5]") == ["2", "4", "6", "8", "10"]
    assert expand_num_values("3-1") == ["3", "2", "1"]
    with pytest.raises(ValueError, match="epoch number"):
        expand_num_values("latest")
    assert [num_label(v) for v in ("3", "final")] == ["epoch 3", "final"]


def test_families_and_missing_epochs():
    assert families_with_epochs(NAMES) == {"hero": [1, 2, 4], "bg": [3]}
    prompts = ["a <lora:style:0.5> <lora:hero-000002:0.8>", "<lyco:bg-000003:1> <lora:hero:1>"]
    assert trained_families(prompts, NAMES) == ["hero", "bg"]
    assert missing_epochs_message("hero", ["1", "final"], NAMES) is None
    message = missing_epochs_message("hero", ["3", "1"], NAMES)
    assert message == 'LoRA "hero" has no file for epoch 3. Saved epochs: 1, 2, 4 and final.'
    assert (
        missing_epochs_message("bg", ["final"], NAMES) == 'LoRA "bg" has no file for final. Saved epochs: 3.'
    )
    assert "only the final file" in missing_epochs_message("style", ["1"], NAMES)
    assert "has no file of it" in missing_epochs_message("gone", ["1"], NAMES)


def test_rewrite_switches_epochs_of_the_family_only():
    prompt = "x <lora:hero-000002:0.8> <lora:style:0.5> <lora:heroic:1>"
    assert rewrite(prompt, ["hero"], value="4") == "x <lora:hero-000004:0.8> <lora:style:0.5> <lora:heroic:1>"
    assert rewrite(prompt, ["hero"], value="final") == "x <lora:hero:0.8> <lora:style:0.5> <lora:heroic:1>"


def test_rewrite_weights_with_te_unet_parts():
    assert rewrite("<lora:hero:1:0.5>", ["hero"], weight=0.7) == "<lora:hero:0.7:0.7>"
    assert rewrite("<lora:hero:1:0.5:8>", ["hero"], weight=0.3) == "<lora:hero:0.3:0.3:8>"
    assert rewrite("<lora:hero:te=1:unet=0.2>", ["hero"], weight=0.6) == "<lora:hero:te=0.6:unet=0.6>"
    assert rewrite("<lora:hero>", ["hero"], weight=0.5) == "<lora:hero:0.5>"
    assert rewrite("<lora:hero:dyn=8>", ["hero"], weight=0.5) == "<lora:hero:0.5:dyn=8>"


def test_strength_without_trained_families_sets_every_tag():
    assert rewrite("<lora:a:1> and <lyco:b:0.2>", weight=0.4) == "<lora:a:0.4> and <lyco:b:0.4>"
    assert rewrite("no tags here", weight=0.4) == "no tags here"
    assert rewrite("<lora:hero-000001:1>", ["hero"], value="2", weight=0) == "<lora:hero-000002:0>"
