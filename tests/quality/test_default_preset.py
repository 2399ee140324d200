"""The quality tests' subject jobs train with the preset a fresh Train tab gives an SD1.5 model."""

from __future__ import annotations

import json
from pathlib import Path

from lib_trainer.spec import spec_from_dict
from lib_trainer.webui.presets import BUILTIN_DIR

from . import harness as h
from . import scores


def test_the_quality_jobs_take_the_tabs_sd15_preset_from_its_file(tmp_path: Path) -> None:
    preset = json.loads((BUILTIN_DIR / "sd15-6gb.json").read_text(encoding="utf-8"))["spec"]
    sections = h.tab_default_preset()
    assert sections["network"] == preset["network"]
    for field in ("learning_rate", "text_encoder_lr", "lr_scheduler", "min_snr_gamma", "batch_size"):
        assert sections["training"][field] == preset["training"][field], field
    # bitsandbytes' 8-bit AdamW runs on CUDA only: the CPU jobs take the same update in 32 bits
    assert preset["training"]["optimizer"] == "AdamW8bit"
    assert sections["training"]["optimizer"] == "AdamW"
    # the GPU sizing and the epochs are the toy world's own
    for field in h.PRESET_HARDWARE_FIELDS["training"]:
        assert field not in sections["training"], field

    spec = spec_from_dict(scores.subject_job(tmp_path / "plain", "plain", "lora", **scores.PLAIN_SUBJECT))
    assert spec.network.train_text_encoder and spec.training.text_encoder_lr == 5e-5
    assert spec.training.resolution == h.IMAGE_SIZE and spec.training.device == "cpu"
    assert spec.training.epochs == scores.SUBJECT_EPOCHS
    prior_spec = spec_from_dict(scores.prior_job(tmp_path / "prior", "prior"))
    assert prior_spec.network.train_text_encoder and prior_spec.network.learn_trigger
    assert prior_spec.dreambooth.prior == "trigger-off+class-images"
    assert (
        Path(prior_spec.dreambooth.class_data).is_dir() and prior_spec.training.epochs == spec.training.epochs
    )
    assert prior_spec.training.min_snr_gamma == spec.training.min_snr_gamma == 5.0
