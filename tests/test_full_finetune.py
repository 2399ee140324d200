"""The full fine-tune (mode "dreambooth") on tiny models, CPU: the saved checkpoint has the base file's exact
keys and shapes and loads back with the trained weights; what was not trained (the VAE, a frozen text encoder)
is the base file's, byte for byte; EMA, resume, extract-LoRA and never-overwrite behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import base_spec
from safetensors import safe_open

from lib_trainer.export.lora_file import summarize_lora
from lib_trainer.models.checkpoint_io import load_state_dict
from lib_trainer.models.loader import load_base_model
from lib_trainer.spec import spec_from_dict
from lib_trainer.train.job import run_job
from lib_trainer.train.runner import EXIT_CANCELLED, EXIT_OK


def _spec(model: Path, data: Path, out: Path, **sections) -> dict:
    spec = base_spec(
        model,
        data,
        out,
        name="dogft",
        training={"epochs": 2, "batch_size": 2, "learning_rate": 1e-3, "max_steps": None},
        output={"save_every_epochs": 1, "save_precision": "fp32"},
        samples={"every_epochs": 0},
    )
    spec["mode"] = "dreambooth"
    spec["dreambooth"] = {"class_prompt": "a photo of a dog", "num_class_images": 2, "class_steps": 2}
    for key, values in sections.items():
        spec.setdefault(key, {}).update(values)
    return spec


def _events(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]


def _changed(a: dict, b: dict, prefix: str) -> list[str]:
    return [k for k in a if k.startswith(prefix) and not torch.equal(a[k].float(), b[k].float())]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_checkpoint_has_the_base_files_keys_and_shapes_and_the_trained_weights(
    tmp_path, tiny_models, tiny_dataset, family
):
    out = tmp_path / "Stable-diffusion"
    job = tmp_path / "jobs" / "a"
    spec = _spec(tiny_models[family], tiny_dataset, out)
    if family == "sdxl":
        spec["training"]["resolution"] = 64
    assert run_job(spec_from_dict(spec), job) == EXIT_OK
    events = _events(job)
    done = events[-1]
    assert done["type"] == "done"
    saved = [e["path"] for e in events if e["type"] == "checkpoint"]
    assert [Path(p).name for p in saved] == ["dogft-000001.safetensors", "dogft.safetensors"]
    assert all(e.get("model_file") for e in events if e["type"] == "checkpoint")
    assert set(done["files"]) >= set(saved)

    base_state, _ = load_state_dict(tiny_models[family])
    tuned_state, _ = load_state_dict(out / "dogft.safetensors")
    assert list(tuned_state) == list(base_state) or set(tuned_state) == set(base_state)
    assert {k: v.shape for k, v in tuned_state.items()} == {k: v.shape for k, v in base_state.items()}
    assert _changed(tuned_state, base_state, "model.diffusion_model.")  # the UNet was trained
    te_prefix = "conditioner." if family == "sdxl" else "cond_stage_model."
    assert not _changed(tuned_state, base_state, te_prefix)  # the text encoder was not
    assert not _changed(tuned_state, base_state, "first_stage_model.")  # the VAE as the base had it
    assert all(v.dtype == torch.float32 for v in tuned_state.values() if v.is_floating_point())

    with safe_open(str(out / "dogft.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "dogft" and "modelspec.architecture" in meta
    assert "DreamBooth full fine-tune" in meta["ss_training_comment"]
    assert not any(k.startswith(("ss_network_", "sshs_")) for k in meta)
    assert json.loads(meta["lora_trainer_job_spec"])["mode"] == "dreambooth"

    # loads back into the trainer like any checkpoint, and differs from the base where it was trained
    again, base = load_base_model(out / "dogft.safetensors"), load_base_model(tiny_models[family])
    assert again.arch.family == base.arch.family == family
    differ = [
        k
        for k, v in again.unet.state_dict().items()
        if not torch.equal(v.float(), base.unet.state_dict()[k].float())
    ]
    assert differ
    # an epoch file and the final file are different models
    epoch1, _ = load_state_dict(out / "dogft-000001.safetensors")
    assert _changed(tuned_state, epoch1, "model.diffusion_model.")


def test_text_encoder_fine_tune_fp16_ema_and_the_extracted_lora(tmp_path, tiny_models, tiny_dataset):
    out, loras, job = tmp_path / "ckpt", tmp_path / "Lora", tmp_path / "jobs" / "b"
    spec = _spec(
        tiny_models["sd1"],
        tiny_dataset,
        out,
        network={"train_text_encoder": True},
        output={"save_every_epochs": 0, "save_precision": "fp16"},
        finetune={"ema": True, "ema_decay": 0.5, "extract_lora_rank": 4, "lora_dir": str(loras)},
    )
    assert run_job(spec_from_dict(spec), job) == EXIT_OK
    events = _events(job)
    base_state, _ = load_state_dict(tiny_models["sd1"])
    tuned, _ = load_state_dict(out / "dogft.safetensors")
    assert set(tuned) == set(base_state)
    assert _changed(tuned, base_state, "cond_stage_model.")  # the text encoder was trained this time
    assert all(v.dtype == torch.float16 for v in tuned.values() if v.is_floating_point())
    assert [p.name for p in out.iterdir()] == ["dogft.safetensors"]  # no epoch files, no temp files left

    [extracted] = [e for e in events if e["type"] == "lora_extracted"]
    assert Path(extracted["path"]) == loras / "dogft.safetensors" and extracted["rank"] == 4
    summary = summarize_lora(loras / "dogft.safetensors")
    assert (summary["rank"], summary["alpha"], summary["components"]["te"] > 0) == (4, 4.0, True)
    assert extracted["path"] in events[-1]["files"]
    with safe_open(extracted["path"], "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)


def test_ema_saves_the_average_not_the_last_weights(tmp_path, tiny_models, tiny_dataset):
    runs = {}
    for ema in (False, True):
        out = tmp_path / f"out-{ema}"
        spec = _spec(
            tiny_models["sd1"],
            tiny_dataset,
            out,
            output={"save_every_epochs": 0},
            finetune={"ema": ema, "ema_decay": 0.9},
        )
        assert run_job(spec_from_dict(spec), tmp_path / "jobs" / f"ema-{ema}") == EXIT_OK
        runs[ema], _ = load_state_dict(out / "dogft.safetensors")
    base_state, _ = load_state_dict(tiny_models["sd1"])
    key = next(k for k in _changed(runs[False], base_state, "model.diffusion_model.") if k.endswith("weight"))
    moved_last = (runs[False][key] - base_state[key].float()).abs().sum()
    moved_ema = (runs[True][key] - base_state[key].float()).abs().sum()
    # the same training; the average trails the last weights (it starts at the base and warms up)
    assert 0 < moved_ema < moved_last


def test_a_stopped_fine_tune_resumes_to_the_same_model(tmp_path, tiny_models, tiny_dataset):
    def spec(out):
        return spec_from_dict(
            _spec(
                tiny_models["sd1"],
                tiny_dataset,
                out,
                output={"save_every_epochs": 0, "save_lora_on_cancel": False},
                finetune={"ema": True, "ema_decay": 0.9},
            )
        )

    straight = tmp_path / "straight"
    assert run_job(spec(straight), tmp_path / "jobs" / "s") == EXIT_OK
    resumed, job = tmp_path / "resumed", tmp_path / "jobs" / "r"
    assert run_job(spec(resumed), job, stop_at_step=1) == EXIT_CANCELLED
    assert (job / "state" / "weights.safetensors").is_file() and (job / "state" / "extra-ema.pt").is_file()
    assert (job / "state" / "extra-prior.pt").is_file()
    assert not resumed.exists() or not any(resumed.iterdir())
    assert run_job(spec(resumed), job, resume=True) == EXIT_OK
    a, _ = load_state_dict(straight / "dogft.safetensors")
    b, _ = load_state_dict(resumed / "dogft.safetensors")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst


def test_a_new_job_never_overwrites_a_checkpoint(tmp_path, tiny_models, tiny_dataset):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "dogft.safetensors").write_bytes(b"the user's own model")
    spec = _spec(
        tiny_models["sd1"], tiny_dataset, out, output={"save_every_epochs": 0}, training={"max_steps": 1}
    )
    assert run_job(spec_from_dict(spec), tmp_path / "jobs" / "c") == EXIT_OK
    assert (out / "dogft.safetensors").read_bytes() == b"the user's own model"
    assert (out / "dogft_2.safetensors").is_file()


def test_a_high_learning_rate_is_warned_about(tmp_path, tiny_models, tiny_dataset):
    job = tmp_path / "jobs" / "w"
    spec = _spec(tiny_models["sd1"], tiny_dataset, tmp_path / "o", training={"max_steps": 1})
    assert run_job(spec_from_dict(spec), job) == EXIT_OK
    warnings = [e["message"] for e in _events(job) if e["type"] == "warning"]
    assert any("high for a full fine-tune" in m and "1e-6 to 5e-6" in m for m in warnings), warnings


def test_too_little_disk_space_is_warned_about_before_training(
    tmp_path, tiny_models, tiny_dataset, monkeypatch
):
    import shutil

    from lib_trainer.train import finetune

    spec = spec_from_dict(_spec(tiny_models["sd1"], tiny_dataset, tmp_path / "not" / "yet"))
    assert finetune.disk_space_warning(spec, tiny_models["sd1"], tmp_path / "not" / "yet", 2) is None
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    message = finetune.disk_space_warning(spec, tiny_models["sd1"], tmp_path / "not" / "yet", 2)
    assert message.startswith("2 checkpoint(s) of ") and "output.save_every_epochs" in message


def test_the_checkpoint_count_rule_matches_what_a_job_writes(tmp_path, tiny_models, tiny_dataset):
    from lib_trainer.spec.finetune_rules import saved_checkpoints

    def spec(epochs, every):
        data = _spec(tiny_models["sd1"], tiny_dataset, tmp_path, output={"save_every_epochs": every})
        data["training"]["epochs"] = epochs
        return spec_from_dict(data)

    # the first test writes dogft-000001 + dogft for 2 epochs saved every epoch
    assert saved_checkpoints(spec(2, 1), 2) == 2
    assert saved_checkpoints(spec(10, 2), 10) == 5  # epochs 2, 4, 6, 8 and the final file
    assert saved_checkpoints(spec(10, 0), 10) == 1
