"""Hashes and metadata against independent references: hashlib on bytes we build or serialize ourselves."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from lib_trainer.export import hashes
from lib_trainer.export.hashes import (
    addnet_hash_safetensors,
    checkpoint_hashes,
    kohya_lora_hashes,
    legacy_hash_bytes,
)
from lib_trainer.export.metadata import (
    LoraTrainingInfo,
    add_modelspec,
    build_lora_metadata,
    finalize_metadata,
    scrub_private,
)

# ---- helpers ---------------------------------------------------------------------------------------------


def handmade_safetensors(
    arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> tuple[bytes, bytes]:
    """A safetensors file built by hand from the format spec: (file bytes, tensor payload bytes)."""
    header: dict = {}
    payload = b""
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [len(payload), len(payload) + len(raw)],
        }
        payload += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload, payload


def ref_payload_sha(data: bytes) -> str:
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()


def lora_tensors(rank: int = 4, width: int = 320) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(rank, width, generator=gen),
        "lora_unet_a.lora_up.weight": torch.randn(width, rank, generator=gen),
        "lora_unet_a.alpha": torch.tensor(2.0),
    }


def make_info(tmp_path, **overrides) -> LoraTrainingInfo:
    ckpt = tmp_path / "base-model.safetensors"
    if not ckpt.exists():
        ckpt.write_bytes(os.urandom(1_200_000))
    fields = dict(
        output_name="mychar-000002",
        base_model_path=ckpt,
        family="sd1",
        resolution=(512, 768),
        network_dim=8,
        network_alpha=4.0,
        unet_lr=1e-4,
        num_epochs=4,
        epoch=2,
        steps=120,
        max_train_steps=240,
        batch_size=2,
        training_started_at=1_700_000_000.25,
        training_finished_at=1_700_000_600.5,
        train_text_encoder=True,
        text_encoder_lr=5e-5,
        seed=42,
        clip_skip=2,
        tag_frequency={"/data/10_mychar": {"mychar": 12, "smile": 3}},
        dataset_dirs={"10_mychar": {"n_repeats": 10, "img_count": 12}},
        bucket_info={"buckets": {"0": {"resolution": [512, 768], "count": 120}}, "mean_img_ar_error": 0.0},
        enable_bucket=True,
        num_train_images=120,
        trigger_word="mychar",
        job_spec={"name": "mychar", "dataset": {"path": "/data/mychar"}},
    )
    fields.update(overrides)
    return LoraTrainingInfo(**fields)


# ---- hashes ----------------------------------------------------------------------------------------------


def test_addnet_hash_is_sha256_of_payload_only(tmp_path):
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float32)}
    with_meta, payload = handmade_safetensors(arrays, {"ss_output_name": "x", "note": "long " * 50})
    bare, payload2 = handmade_safetensors(arrays)
    assert payload == payload2
    expected = hashlib.sha256(payload).hexdigest()
    assert addnet_hash_safetensors(with_meta) == expected
    assert addnet_hash_safetensors(bare) == expected  # metadata never changes it
    path = tmp_path / "f.safetensors"
    path.write_bytes(with_meta)
    assert addnet_hash_safetensors(path) == expected
    assert addnet_hash_safetensors(str(path)) == expected


def test_addnet_hash_rejects_truncated_data(tmp_path):
    data, _ = handmade_safetensors({"w": np.zeros(4, dtype=np.float32)})
    with pytest.raises(ValueError, match="truncated"):
        addnet_hash_safetensors(data[:12])
    with pytest.raises(ValueError, match="only 3 bytes"):
        addnet_hash_safetensors(b"abc")
    with pytest.raises(FileNotFoundError):
        addnet_hash_safetensors(tmp_path / "missing.safetensors")


def test_legacy_hash_reads_64k_at_1mib():
    data = os.urandom(0x100000 + 0x10000 + 5000)
    assert legacy_hash_bytes(data) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    short = os.urandom(0x100000 + 100)  # shorter than the window: kohya reads what is there
    assert legacy_hash_bytes(short) == hashlib.sha256(short[0x100000:]).hexdigest()[:8]
    assert legacy_hash_bytes(b"tiny") == hashlib.sha256(b"").hexdigest()[:8]


def test_kohya_lora_hashes_match_reference_on_file_over_1mib():
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "lora_unet_x.lora_down.weight": torch.randn(64, 5000, generator=gen),
        "lora_unet_x.alpha": torch.tensor(8.0),
    }
    meta = {
        "ss_output_name": "x",
        "ss_network_dim": "64",
        "modelspec.title": "x",
        "lora_trainer_version": "1",
    }
    ref_bytes = st_save(tensors, {"ss_output_name": "x", "ss_network_dim": "64"})
    assert len(ref_bytes) > 0x110000
    model_hash, legacy = kohya_lora_hashes(tensors, meta)
    assert model_hash == ref_payload_sha(ref_bytes)
    assert legacy == hashlib.sha256(ref_bytes[0x100000:0x110000]).hexdigest()[:8]
    # non-ss keys are excluded (user-editable), ss keys shift the header and so the legacy hash
    assert kohya_lora_hashes(tensors, {**meta, "modelspec.title": "renamed"}) == (model_hash, legacy)
    other = kohya_lora_hashes(tensors, {**meta, "ss_output_name": "a much longer output name" * 4})
    assert other[0] == model_hash
    assert other[1] != legacy


def test_checkpoint_hashes_match_a1111_formulas(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    data = os.urandom(0x180000)
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    cache: dict = {}
    got = checkpoint_hashes(path, cache=cache)
    assert got == {
        "ss_sd_model_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
        "ss_new_sd_model_hash": full,
        "autov2": full[:10],
    }

    def boom(_path):
        raise AssertionError("the full file must not be hashed again")

    monkeypatch.setattr(hashes, "file_sha256", boom)
    assert checkpoint_hashes(path, cache=cache) == got
    assert checkpoint_hashes(path, cache={}, sha256=full.upper()) == got  # precomputed value skips the read
    with pytest.raises(ValueError, match="64 hexadecimal"):
        checkpoint_hashes(path, sha256="abc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_hashes(tmp_path / "nope.safetensors")


def test_checkpoint_hash_cache_notices_a_replaced_file(tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"a" * 100)
    cache: dict = {}
    first = checkpoint_hashes(path, cache=cache)
    path.write_bytes(b"b" * 200)
    second = checkpoint_hashes(path, cache=cache)
    assert (
        second["ss_new_sd_model_hash"]
        == hashlib.sha256(b"b" * 200).hexdigest()
        != first["ss_new_sd_model_hash"]
    )


# ---- metadata ----------------------------------------------------------------------------------------------

A1111_READS = [
    "ss_output_name",
    "ss_sd_model_name",
    "ss_clip_skip",
    "ss_network_module",
    "ss_training_started_at",
    "ss_bucket_info",
    "ss_dataset_dirs",
    "ss_tag_frequency",
    "ss_base_model_version",
    "ss_v2",
    "ss_resolution",
    "ss_num_train_images",
]
KOHYA_FOLDER_MODE = [
    "ss_session_id",
    "ss_learning_rate",
    "ss_text_encoder_lr",
    "ss_unet_lr",
    "ss_num_reg_images",
    "ss_num_batches_per_epoch",
    "ss_num_epochs",
    "ss_epoch",
    "ss_steps",
    "ss_max_train_steps",
    "ss_gradient_checkpointing",
    "ss_gradient_accumulation_steps",
    "ss_lr_warmup_steps",
    "ss_lr_scheduler",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_dropout",
    "ss_mixed_precision",
    "ss_full_fp16",
    "ss_max_token_length",
    "ss_cache_latents",
    "ss_seed",
    "ss_noise_offset",
    "ss_min_snr_gamma",
    "ss_caption_dropout_rate",
    "ss_optimizer",
    "ss_max_grad_norm",
    "ss_sd_model_hash",
    "ss_new_sd_model_hash",
    "ss_batch_size_per_device",
    "ss_total_batch_size",
    "ss_flip_aug",
    "ss_shuffle_caption",
    "ss_keep_tokens",
    "ss_enable_bucket",
    "ss_bucket_no_upscale",
    "ss_min_bucket_reso",
    "ss_max_bucket_reso",
    "ss_training_finished_at",
    "ss_training_comment",
]


def test_metadata_has_every_key_and_only_strings(tmp_path):
    info = make_info(tmp_path)
    meta = add_modelspec(build_lora_metadata(info), info)
    final = finalize_metadata(lora_tensors(), meta)
    for key in [*A1111_READS, *KOHYA_FOLDER_MODE, "sshs_model_hash", "sshs_legacy_hash"]:
        assert key in final, key
    for key in [
        "sai_model_spec",
        "architecture",
        "implementation",
        "title",
        "resolution",
        "date",
        "prediction_type",
    ]:
        assert f"modelspec.{key}" in final, key
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in final.items())
    assert final["ss_output_name"] == "mychar-000002"
    assert final["ss_sd_model_name"] == "base-model.safetensors"
    assert final["ss_network_module"] == "networks.lora"
    assert final["ss_network_dim"] == "8" and final["ss_network_alpha"] == "4.0"
    assert final["ss_resolution"] == "(512, 768)"
    assert final["ss_v2"] == "False" and final["ss_base_model_version"] == "sd_v1"
    assert final["ss_num_epochs"] == "4" and final["ss_epoch"] == "2" and final["ss_steps"] == "120"
    assert final["ss_training_started_at"] == "1700000000.25"
    assert final["ss_clip_skip"] == "2" and final["modelspec.encoder_layer"] == "2"
    assert final["ss_total_batch_size"] == "2" and final["ss_text_encoder_lr"] == "5e-05"
    assert final["modelspec.resolution"] == "512x768"
    assert final["modelspec.trigger_phrase"] == "mychar"
    assert final["modelspec.title"] == "mychar-000002"
    # A1111 JSON-decodes values that start with "{": they must be valid JSON with folder names only
    assert json.loads(final["ss_tag_frequency"]) == {"10_mychar": {"mychar": 12, "smile": 3}}
    assert json.loads(final["ss_dataset_dirs"])["10_mychar"]["img_count"] == 12
    assert json.loads(final["ss_bucket_info"])["buckets"]["0"]["count"] == 120


def test_model_hashes_in_metadata_are_the_file_hashes(tmp_path):
    info = make_info(tmp_path)
    data = info.base_model_path.read_bytes()
    meta = build_lora_metadata(info)
    assert meta["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    given = {"ss_sd_model_hash": "12345678", "ss_new_sd_model_hash": "f" * 64, "autov2": "f" * 10}
    assert build_lora_metadata(make_info(tmp_path, base_model_hashes=given))["ss_sd_model_hash"] == "12345678"


def test_vae_keys_only_for_a_vae_file(tmp_path):
    assert "ss_vae_name" not in build_lora_metadata(make_info(tmp_path))
    assert "ss_vae_name" not in build_lora_metadata(make_info(tmp_path, vae_path=tmp_path / "absent.pt"))
    vae = tmp_path / "vae-ft-mse.safetensors"
    vae.write_bytes(b"vae" * 1000)
    meta = build_lora_metadata(make_info(tmp_path, vae_path=vae))
    assert meta["ss_vae_name"] == "vae-ft-mse.safetensors"
    assert meta["ss_new_vae_hash"] == hashlib.sha256(vae.read_bytes()).hexdigest()
    assert meta["ss_vae_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # file shorter than 1 MiB


@pytest.mark.parametrize(
    ("family", "vpred", "version", "arch", "impl"),
    [
        ("sd1", False, "sd_v1", "stable-diffusion-v1/lora", "diffusers"),
        ("sd1", True, "sd_v1_v", "stable-diffusion-v1/lora", "diffusers"),
        ("sd2", False, "sd_v2", "stable-diffusion-v2-512/lora", "diffusers"),
        ("sd2", True, "sd_v2_v", "stable-diffusion-v2-768-v/lora", "diffusers"),
        (
            "sdxl",
            False,
            "sdxl_base_v1-0",
            "stable-diffusion-xl-v1-base/lora",
            "https://github.com/Stability-AI/generative-models",
        ),
    ],
)
def test_model_family_keys(tmp_path, family, vpred, version, arch, impl):
    info = make_info(tmp_path, family=family, v_prediction=vpred)
    meta = add_modelspec(build_lora_metadata(info), info)
    assert meta["ss_base_model_version"] == version
    assert meta["ss_v2"] == str(family == "sd2")
    assert meta["modelspec.architecture"] == arch
    assert meta["modelspec.implementation"] == impl
    assert meta["modelspec.prediction_type"] == ("v" if vpred else "epsilon")
    assert ("modelspec.encoder_layer" in meta) == (family != "sdxl")  # clip skip is ignored on SDXL


def test_encoder_layer_omitted_for_default_clip_skip(tmp_path):
    for clip_skip in (None, 1):
        info = make_info(tmp_path, clip_skip=clip_skip)
        assert "modelspec.encoder_layer" not in add_modelspec(build_lora_metadata(info), info)


def test_session_id_is_shared_by_all_saves_of_a_run(tmp_path):
    a = build_lora_metadata(make_info(tmp_path, epoch=1))
    b = build_lora_metadata(make_info(tmp_path, epoch=2, output_name="mychar"))
    assert a["ss_session_id"] == b["ss_session_id"]
    assert build_lora_metadata(make_info(tmp_path, session_id=7))["ss_session_id"] == "7"


def test_unet_only_records_no_text_encoder_lr(tmp_path):
    meta = build_lora_metadata(make_info(tmp_path, train_text_encoder=False))
    assert meta["ss_text_encoder_lr"] == "0"
    assert meta["ss_unet_lr"] == "0.0001" == meta["ss_learning_rate"]


def test_bad_family_and_name_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'sd3'"):
        build_lora_metadata(make_info(tmp_path, family="sd3"))
    with pytest.raises(ValueError, match="output name"):
        build_lora_metadata(make_info(tmp_path, output_name=" "))


def test_job_spec_is_scrubbed_of_home_paths_and_secrets(tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    spec = {
        "dataset": {"path": f"{home}/pics/10_cat", "max_token_length": 150, "keep_tokens": 1},
        "model": {"checkpoint": str(home / "models" / "sd15.safetensors"), "vae": "none"},
        "hf_token": "hf_" + "a" * 34,
        "wandbApiKey": "xyz",
        "logging": {"password": "p", "note": f"see {home}/notes.txt", "other": f"{home}bob/x"},
        "prompts": ["a photo", f"{home}"],
    }
    meta = build_lora_metadata(make_info(tmp_path, job_spec=spec))
    recorded = json.loads(meta["lora_trainer_job_spec"])
    text = meta["lora_trainer_job_spec"]
    assert str(home) + "/" not in text
    assert recorded["dataset"] == {"path": "~/pics/10_cat", "max_token_length": 150, "keep_tokens": 1}
    assert recorded["model"]["checkpoint"] == "~/models/sd15.safetensors"
    assert (
        "hf_token" not in recorded and "wandbApiKey" not in recorded and "password" not in recorded["logging"]
    )
    assert recorded["logging"]["note"] == "see ~/notes.txt"
    assert recorded["logging"]["other"] == f"{home}bob/x"  # a different folder that merely starts alike
    assert recorded["prompts"] == ["a photo", "~"]
    assert meta["lora_trainer_version"]


def test_scrub_handles_windows_homes_and_token_values():
    home = r"C:\Users\Bob"
    out = scrub_private(
        {"a": r"C:\Users\Bob\loras\x", "b": "c:/users/bob/data", "c": "token hf_" + "Z" * 36}, home=home
    )
    assert out == {"a": r"~\loras\x", "b": "~/data", "c": "token <removed>"}
    assert scrub_private({"p": "/x/y"}, home="/") == {"p": "/x/y"}  # a root home is never scrubbed


def test_finalize_metadata_does_not_mutate_and_replaces_stale_hashes():
    meta = {"ss_output_name": "x", "sshs_model_hash": "stale"}
    out = finalize_metadata(lora_tensors(), meta)
    assert meta == {"ss_output_name": "x", "sshs_model_hash": "stale"}
    ref = st_save(lora_tensors(), {"ss_output_name": "x"})
    assert out["sshs_model_hash"] == ref_payload_sha(ref)
    assert out["sshs_legacy_hash"] == hashlib.sha256(ref[0x100000:0x110000]).hexdigest()[:8]
