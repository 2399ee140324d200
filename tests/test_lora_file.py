"""Saving, the Lora-card sidecar and `inspect` on small synthetic kohya files."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lib_trainer.export.lora_file import save_lora, summarize_lora, write_lora_sidecar_json


def file_payload_sha(path) -> str:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()


def module(out: dict, name: str, in_f: int, out_f: int, rank: int, alpha: float, conv: bool = False) -> None:
    gen = torch.Generator().manual_seed(len(out))
    down_shape = (rank, in_f, 1, 1) if conv else (rank, in_f)
    up_shape = (out_f, rank, 1, 1) if conv else (out_f, rank)
    out[f"{name}.lora_down.weight"] = torch.randn(*down_shape, generator=gen) * 0.1
    out[f"{name}.lora_up.weight"] = torch.randn(*up_shape, generator=gen) * 0.1
    out[f"{name}.alpha"] = torch.tensor(float(alpha))


def sd1_tensors(
    te_width: int = 768, ctx: int = 768, rank: int = 4, alpha: float = 2.0
) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    block = "lora_unet_down_blocks_0_attentions_0"
    module(t, f"{block}_transformer_blocks_0_attn1_to_q", 320, 320, rank, alpha)
    module(t, f"{block}_transformer_blocks_0_attn2_to_k", ctx, 320, rank, alpha)
    module(t, f"{block}_proj_in", 320, 320, rank, alpha, conv=True)
    module(t, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", te_width, te_width, rank, alpha)
    module(t, "lora_te_text_model_encoder_layers_0_mlp_fc1", te_width, te_width * 4, rank, alpha)
    return t


def sdxl_tensors() -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    module(t, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 640, 640, 8, 4)
    module(t, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048, 640, 8, 4)
    module(t, "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", 5120, 1280, 16, 8)
    module(t, "lora_te1_text_model_encoder_layers_0_self_attn_k_proj", 768, 768, 8, 4)
    module(t, "lora_te2_text_model_encoder_layers_31_mlp_fc2", 5120, 1280, 8, 4)
    return t


# ---- save_lora ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_save_casts_every_tensor_including_alpha(tmp_path, precision, dtype):
    path = tmp_path / "mylora.safetensors"
    save_lora(path, sd1_tensors(), {"ss_output_name": "something-else", "modelspec.title": "t"}, precision)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {dtype}
        alpha = f.get_tensor("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha")
        meta = f.metadata()
    assert alpha.dtype == dtype and float(alpha) == 2.0
    assert meta["ss_output_name"] == "mylora"  # the alias must be the file's own name
    assert meta["sshs_model_hash"] == file_payload_sha(path)  # what A1111 would compute from the file
    assert len(meta["sshs_legacy_hash"]) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["mylora.safetensors"]


def test_save_hashes_are_computed_on_the_cast_tensors(tmp_path):
    tensors = sd1_tensors()
    path = tmp_path / "a.safetensors"
    save_lora(path, tensors, {"ss_network_dim": "4"}, "fp16")
    from safetensors.torch import save

    ref = save(
        {k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
        {"ss_network_dim": "4", "ss_output_name": "a"},
    )
    (n,) = struct.unpack("<Q", ref[:8])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["sshs_model_hash"] == hashlib.sha256(ref[8 + n :]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(ref[0x100000:0x110000]).hexdigest()[:8]


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.safetensors"
    save_lora(path, sd1_tensors(), {}, "fp16")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists and will not be overwritten"):
        save_lora(path, sd1_tensors(rank=8), {}, "fp16")
    assert path.read_bytes() == before
    save_lora(path, sd1_tensors(rank=8), {}, "fp16", overwrite=True)
    assert summarize_lora(path)["rank"] == 8


def test_save_errors_are_clear_and_leave_no_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="use fp16, bf16 or fp32"):
        save_lora(path, sd1_tensors(), {}, "int8")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_lora(tmp_path / "x.ckpt", sd1_tensors(), {}, "fp16")
    broken = sd1_tensors()
    broken["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite.*diverged"):
        save_lora(path, broken, {}, "fp16")
    huge = sd1_tensors()
    huge["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"][0, 0] = 1e6
    with pytest.raises(ValueError, match="too large for fp16.*bf16 or fp32"):
        save_lora(path, huge, {}, "fp16")
    save_lora(path, huge, {}, "bf16")  # bf16 has the range
    with pytest.raises(ValueError, match="no weights"):
        save_lora(tmp_path / "y.safetensors", {}, {}, "fp16")
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


# ---- sidecar ---------------------------------------------------------------------------------------------


def test_sidecar_has_the_keys_the_lora_card_reads(tmp_path):
    path = tmp_path / "mylora.json"
    write_lora_sidecar_json(
        path, activation_text="mychar", preferred_weight=0.8, sd_version="SDXL", description="d"
    )
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {
        "description": "d",
        "sd version": "SDXL",
        "activation text": "mychar",
        "preferred weight": 0.8,
        "negative text": "",
        "notes": "",
    }


def test_sidecar_keeps_keys_the_user_added(tmp_path):
    path = tmp_path / "mylora.json"
    path.write_text(json.dumps({"notes": "mine", "pinned": True}), encoding="utf-8")
    write_lora_sidecar_json(path, activation_text="a", preferred_weight=1, sd_version="SD1", notes="n")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["pinned"] is True and data["notes"] == "n" and data["preferred weight"] == 1.0


def test_sidecar_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="sd_version must be one of SD1, SD2, SDXL, Unknown"):
        write_lora_sidecar_json(
            tmp_path / "a.json", activation_text="", preferred_weight=1, sd_version="sdxl"
        )
    with pytest.raises(ValueError, match="preferred weight must be a number"):
        write_lora_sidecar_json(
            tmp_path / "a.json", activation_text="", preferred_weight="high", sd_version="SD1"
        )


# ---- summarize_lora --------------------------------------------------------------------------------------


def test_summarize_sd1_from_keys(tmp_path):
    path = tmp_path / "sd1.safetensors"
    save_file(sd1_tensors(), str(path))
    report = summarize_lora(path)
    assert report["architecture"] == "sd1" and report["architecture_source"] == "key names"
    assert report["modules"] == 5 and report["keys"] == 15
    assert report["components"] == {"te": 2, "unet": 3}
    assert report["rank"] == 4 and report["alpha"] == 2.0
    assert report["dtypes"] == ["fp32"]
    assert report["metadata"] == {} and report["other_keys"] == 0 and report["modules_without_alpha"] == 0


def test_summarize_sd2_by_text_encoder_width(tmp_path):
    path = tmp_path / "sd2.safetensors"
    save_file(sd1_tensors(te_width=1024, ctx=1024), str(path))
    assert summarize_lora(path)["architecture"] == "sd2"
    unet_only = {k: v for k, v in sd1_tensors(ctx=1024).items() if k.startswith("lora_unet_")}
    save_file(unet_only, str(tmp_path / "sd2u.safetensors"))
    assert summarize_lora(tmp_path / "sd2u.safetensors")["architecture"] == "sd2"


def test_summarize_sdxl_with_mixed_ranks(tmp_path):
    path = tmp_path / "xl.safetensors"
    save_file({k: v.half() for k, v in sdxl_tensors().items()}, str(path))
    report = summarize_lora(path)
    assert report["architecture"] == "sdxl"
    assert report["components"] == {"te1": 1, "te2": 1, "unet": 3}
    assert report["rank"] == [8, 16] and report["alpha"] == [4.0, 8.0]
    assert report["dtypes"] == ["fp16"]
    unet_only = {k: v for k, v in sdxl_tensors().items() if k.startswith("lora_unet_")}
    save_file(unet_only, str(tmp_path / "xlu.safetensors"))
    assert summarize_lora(tmp_path / "xlu.safetensors")["architecture"] == "sdxl"


def test_summarize_prefers_metadata_written_by_save_lora(tmp_path):
    path = tmp_path / "meta.safetensors"
    meta = {"ss_base_model_version": "sd_v2_v", "ss_v2": "True", "ss_network_module": "networks.lora"}
    save_lora(path, sd1_tensors(), meta, "bf16")
    report = summarize_lora(path)
    assert report["architecture"] == "sd2" and report["architecture_source"] == "ss_base_model_version"
    assert report["prediction_type"] == "v"
    assert report["dtypes"] == ["bf16"] and report["alpha"] == 2.0
    assert report["metadata"]["ss_output_name"] == "meta" and "sshs_model_hash" in report["metadata"]
    save_file(
        sdxl_tensors(),
        str(tmp_path / "spec.safetensors"),
        {"modelspec.architecture": "stable-diffusion-v1/lora"},
    )
    assert summarize_lora(tmp_path / "spec.safetensors")["architecture_source"] == "modelspec.architecture"


def test_summarize_pt_file_and_bad_inputs(tmp_path):
    torch.save(sd1_tensors(), tmp_path / "old.pt")
    assert summarize_lora(tmp_path / "old.pt")["modules"] == 5
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        summarize_lora(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        summarize_lora(tmp_path / "junk.safetensors")
    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(ValueError, match="no kohya LoRA weights"):
        summarize_lora(tmp_path / "ckpt.safetensors")
