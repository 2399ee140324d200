"""End-to-end runs of the trainer on tiny SD1, SD2-v and SDXL models, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import base_spec
from quality.kohya_merge import attach_trainer_state, merged_base_model
from safetensors import safe_open
from safetensors.torch import load_file

from lib_trainer.models.loader import load_base_model
from lib_trainer.spec import spec_from_dict
from lib_trainer.train.events import read_events
from lib_trainer.train.job import run_job


def _run(spec_dict: dict, job_dir: Path, **kwargs) -> tuple[int, list[dict]]:
    code = run_job(spec_from_dict(spec_dict), job_dir, **kwargs)
    return code, read_events(job_dir / "events.jsonl")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("train_te", [False, True])
def test_training_produces_kohya_files(tmp_path, tiny_models, tiny_dataset, family, train_te):
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models[family],
        tiny_dataset,
        out,
        network={"train_text_encoder": train_te},
        samples={"every_epochs": 2, "prompts": [{"prompt": "{trigger} circle", "seed": 3, "steps": 2}]},
    )
    code, events = _run(spec, tmp_path / "job")
    assert code == 0, [e for e in events if e["type"] == "error"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds and "sample" in kinds
    assert sorted(p.name for p in out.iterdir()) == [
        "t-000001.safetensors",
        "t.json",
        "t.preview.png",
        "t.safetensors",
    ]
    sidecar = json.loads((out / "t.json").read_text())
    assert sidecar["activation text"] == "sks"
    assert sidecar["sd version"] == {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}[family]

    with safe_open(str(out / "t.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_output_name"] == "t"
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 2.0
    assert (
        meta["ss_base_model_version"] == {"sd1": "sd_v1", "sd2": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}[family]
    )
    assert meta["ss_v2"] == str(family == "sd2")
    assert meta["ss_v_parameterization"] == str(family == "sd2")
    assert meta["sshs_model_hash"] and meta["sshs_legacy_hash"] and meta["modelspec.architecture"]
    assert "sks" in meta["ss_tag_frequency"]
    te_prefix = "lora_te1_" if family == "sdxl" else "lora_te_"
    assert any(k.startswith("lora_unet_") for k in keys)
    assert any(k.startswith(te_prefix) for k in keys) == train_te
    if family == "sdxl" and train_te:
        assert any(k.startswith("lora_te2_") for k in keys)
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    samples = [e["path"] for e in events if e["type"] == "sample"]
    assert samples and all(Path(p).is_file() for p in samples)


def test_loss_goes_down_when_overfitting(tmp_path, tiny_models, tiny_dataset):
    spec = base_spec(
        tiny_models["sd1"],
        tiny_dataset,
        tmp_path / "Lora",
        network={"rank": 16, "alpha": 16},
        training={"epochs": 60, "learning_rate": 3e-3, "batch_size": 4},
        output={"save_every_epochs": 0},
    )
    # The noise is random every step, so single losses are noisy; the per-epoch averages (every step counts,
    # whatever the machine's speed) of the last epochs must be clearly below those of the first.
    code, events = _run(spec, tmp_path / "job")
    assert code == 0
    losses = [e["epoch_loss"] for e in events if "epoch_loss" in e]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def _trained_modules(model_path: Path, job_dir: Path):
    """The trained model as the trainer held it: base + peft LoRA + the final saved LoRA state."""
    base = load_base_model(model_path)
    attach_trainer_state(base, load_file(str(job_dir / "state" / "lora.safetensors")), 4, 2)
    return base


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_exported_file_reproduces_trained_model(tmp_path, tiny_models, tiny_dataset, family):
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models[family], tiny_dataset, out, network={"train_text_encoder": True}, training={"epochs": 1}
    )
    code, _ = _run(spec, tmp_path / "job")
    assert code == 0
    trained = _trained_modules(tiny_models[family], tmp_path / "job")
    lora = load_file(str(out / "t.safetensors"))
    assert all(lora[k].item() == 2.0 for k in lora if k.endswith(".alpha"))

    merged, unmatched = merged_base_model(tiny_models[family], lora)
    assert not unmatched

    torch.manual_seed(0)
    ids = torch.randint(0, 49000, (2, 77))
    for a, b in zip(trained.text_encoders, merged.text_encoders, strict=True):
        with torch.no_grad():
            ha = a(ids, output_hidden_states=True).hidden_states[-2]
            hb = b(ids, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(ha, hb, atol=1e-5, rtol=1e-4)
    cfg = trained.unet.config
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 700])
    ctx = torch.randn(2, 77, cfg.cross_attention_dim)
    kwargs = {}
    if family == "sdxl":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(
                2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            ),
            "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32),
        }
    with torch.no_grad():
        ya = trained.unet(x, t, ctx, **kwargs).sample
        yb = merged.unet(x, t, ctx, **kwargs).sample
        base_y = load_base_model(tiny_models[family]).unet(x, t, ctx, **kwargs).sample
    assert not torch.allclose(ya, base_y, atol=1e-4), "training changed nothing"
    assert torch.allclose(ya, yb, atol=1e-5, rtol=1e-4), (ya - yb).abs().max()


LEARNT_TRIGGER = {"learn_trigger": True, "trigger_vectors": 2, "trigger_train_fraction": 0.75}


@pytest.mark.parametrize("learnt_trigger", [False, True], ids=["lora", "lora+learnt-trigger"])
def test_resume_gives_the_same_lora(tmp_path, tiny_models, tiny_dataset, learnt_trigger):
    spec = base_spec(
        tiny_models["sd1"],
        tiny_dataset,
        tmp_path / "a",
        network={"train_text_encoder": True, **(LEARNT_TRIGGER if learnt_trigger else {})},
        dataset={"flip_aug": True, "shuffle_captions": True, "caption_dropout": 0.2},
        training={"epochs": 4, "lr_scheduler": "cosine", "optimizer": "AdamW"},
        output={"save_every_epochs": 0},
    )
    code, events = _run(spec, tmp_path / "straight")
    assert code == 0
    total = next(e["total_steps"] for e in events if e.get("total_steps") and e["type"] == "info")
    straight = load_file(str(tmp_path / "a" / "t.safetensors"))

    spec["output"]["dir"] = str(tmp_path / "b")
    code, events = _run(spec, tmp_path / "split", stop_at_step=total // 2 + 1)
    assert code == 3 and events[-1]["type"] == "cancelled" and events[-1]["resumable"]
    assert (tmp_path / "b" / f"t-step{total // 2 + 1:08d}.safetensors").is_file()
    code, events = _run(spec, tmp_path / "split", resume=True)
    assert code == 0, events[-1]
    resumed = load_file(str(tmp_path / "b" / "t.safetensors"))
    assert set(resumed) == set(straight)
    assert any(k.startswith("bundle_emb.") for k in straight) == learnt_trigger
    for key in straight:
        assert torch.allclose(straight[key], resumed[key], atol=1e-6), key


OPTION_SETS = {
    "sdxl-checkpointing-adafactor-disk-cache": (
        "sdxl",
        {
            "training": {
                "optimizer": "Adafactor",
                "gradient_checkpointing": True,
                "gradient_accumulation_steps": 2,
                "lr_scheduler": "cosine_with_restarts",
                "lr_scheduler_num_cycles": 2,
                "lr_warmup_steps": 0.2,
                "min_snr_gamma": 5.0,
                "noise_offset": 0.05,
            },
            "network": {"train_text_encoder": True},
            "dataset": {"cache_latents": "disk", "flip_aug": True},
        },
    ),
    "sd1-prodigy-clipskip-no-upscale": (
        "sd1",
        {
            "training": {
                "optimizer": "Prodigy",
                "learning_rate": 1.0,
                "lr_scheduler": "polynomial",
                "resolution": 128,
            },
            "model": {"clip_skip": 2},
            "dataset": {"bucket_no_upscale": True, "keep_tokens": 1, "shuffle_captions": True},
        },
    ),
    "sd2-no-buckets-linear": (
        "sd2",
        {
            "training": {"lr_scheduler": "linear", "max_steps": 3},
            "dataset": {"enable_bucket": False, "cache_latents": "off", "prepend_trigger_word": True},
        },
    ),
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_training_options_end_to_end(tmp_path, tiny_models, tiny_dataset, name):
    family, sections = OPTION_SETS[name]
    sections = {k: dict(v) for k, v in sections.items()}
    spec = base_spec(tiny_models[family], tiny_dataset, tmp_path / "Lora", **sections)
    if sections.get("dataset", {}).get("cache_latents") == "disk":
        spec["dataset"]["cache_dir"] = str(tmp_path / "cache")
    code, events = _run(spec, tmp_path / "job")
    assert code == 0, [e for e in events if e["type"] in ("error", "warning")]
    lora = load_file(str(tmp_path / "Lora" / "t.safetensors"))
    # SDXL's first text encoder feeds its penultimate layer to the UNet, so its last layer (layer 1 of the tiny
    # model) never gets a gradient; kohya trains (and exports) it all the same, and so do we.
    ups = {
        k: v
        for k, v in lora.items()
        if k.endswith("lora_up.weight") and not k.startswith("lora_te1_text_model_encoder_layers_1_")
    }
    # lora_up starts at zero: every trained layer (also through gradient checkpointing) must have moved.
    assert ups and all(v.abs().sum() > 0 for v in ups.values()), [
        k for k, v in ups.items() if v.abs().sum() == 0
    ][:3]
    if spec["dataset"].get("cache_latents") == "disk":
        cached = list((tmp_path / "cache").rglob("*.safetensors"))
        assert len(cached) == 2 * 6  # 6 images, plain and flipped
        spec["output"]["dir"] = str(tmp_path / "Lora2")
        stamp = {p: p.stat().st_mtime_ns for p in cached}
        code, _ = _run(spec, tmp_path / "job2")
        assert code == 0
        assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # reused, not rewritten


def test_separate_vae_file_and_unique_names(tmp_path, tiny_models, tiny_dataset):
    from safetensors.torch import save_file

    from lib_trainer.models.tiny import build_random_state_dict

    # A VAE file as users download them: bare LDM keys, no 'first_stage_model.' prefix, other weights.
    other = build_random_state_dict("sd1", seed=5)
    vae = {k[len("first_stage_model.") :]: v for k, v in other.items() if k.startswith("first_stage_model.")}
    vae_path = tmp_path / "my.vae.safetensors"
    save_file(vae, str(vae_path))
    out = tmp_path / "Lora"
    spec = base_spec(
        tiny_models["sd1"], tiny_dataset, out, model={"vae": str(vae_path)}, training={"epochs": 1}
    )
    assert _run(spec, tmp_path / "job1")[0] == 0
    code, events = _run(spec, tmp_path / "job2")
    assert code == 0
    assert events[-1]["output_name"] == "t_2"  # never overwrite or reuse a name the WebUI may have cached
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["t.safetensors", "t_2.safetensors"]
    with safe_open(str(out / "t_2.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_vae_name"] == "my.vae.safetensors" and meta["ss_output_name"] == "t_2"


def test_family_folder_names_are_unique_across_the_whole_lora_tree(tmp_path, tiny_models, tiny_dataset):
    """The WebUI tab's layout: each LoRA in its own folder, its name unused anywhere under the LoRA dir."""
    out = tmp_path / "Lora"
    (out / "older" / "deeper").mkdir(parents=True)
    (out / "older" / "deeper" / "T-000002.safetensors").write_bytes(b"x")  # another family's epoch file
    spec = base_spec(
        tiny_models["sd1"], tiny_dataset, out, training={"epochs": 2}, output={"family_folder": True}
    )
    code, events = _run(spec, tmp_path / "job1")
    assert code == 0 and events[-1]["output_name"] == "t_2"
    assert sorted(p.name for p in (out / "t_2").iterdir()) == [
        "t_2-000001.safetensors",
        "t_2.json",
        "t_2.safetensors",
    ]
    code, events = _run(spec, tmp_path / "job2")
    assert code == 0 and events[-1]["output_name"] == "t_3"
    assert (out / "t_3" / "t_3.safetensors").is_file()


def test_default_sample_prompt_when_none_given(tmp_path, tiny_models, tiny_dataset):
    spec = base_spec(tiny_models["sd1"], tiny_dataset, tmp_path / "Lora", training={"epochs": 1})
    spec["samples"] = {"every_epochs": 1, "prompts": []}
    code, events = _run(spec, tmp_path / "job")
    assert code == 0
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 1 and "sks" in samples[0]["prompt"] and Path(samples[0]["path"]).is_file()


def test_samples_follow_clip_skip(tmp_path, tiny_models, tiny_dataset):
    """CLIP skip 2 (common for anime models) used to crash sampling inside diffusers; samples now use the
    training text path, so skip 1 and skip 2 give different images from the same weights and seed."""
    pixels = []
    for skip in (1, 2):
        spec = base_spec(
            tiny_models["sd1"], tiny_dataset, tmp_path / f"Lora{skip}", training={"max_steps": 1}
        )
        spec["model"]["clip_skip"] = skip
        spec["training"]["learning_rate"] = 1e-9
        spec["samples"] = {"every_epochs": 1, "prompts": [{"prompt": "a sks shape", "steps": 2, "seed": 3}]}
        code, events = _run(spec, tmp_path / f"job{skip}")
        assert code == 0, events[-1]
        path = next(e["path"] for e in events if e["type"] == "sample")
        from PIL import Image

        pixels.append(torch.tensor(list(Image.open(path).convert("L").getdata()), dtype=torch.float32))
    assert (pixels[0] - pixels[1]).abs().mean() > 0.5


def test_long_captions_are_reported(tmp_path, tiny_models):
    from lib_trainer.demo import make_dataset

    data = make_dataset(tmp_path / "data", count=2)
    caption = next((data).rglob("img_000.txt"))
    caption.write_text(", ".join(f"tag{i}" for i in range(120)), encoding="utf-8")
    code, events = _run(
        base_spec(tiny_models["sd1"], data, tmp_path / "Lora", training={"max_steps": 1}), tmp_path / "job"
    )
    assert code == 0
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("img_000.png" in w and "75 tokens" in w for w in warnings), warnings
