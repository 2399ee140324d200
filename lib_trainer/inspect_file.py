"""`inspect`: say what a file is. For a LoRA: architecture, modules, rank, alpha, metadata. For a checkpoint:
the detected model type and the shapes that decided it."""

from __future__ import annotations

from pathlib import Path

from .models.arch import ModelFormatError, analyse_checkpoint
from .models.checkpoint_io import load_state_dict, read_safetensors_header, tensor_shapes


def inspect_path(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        shapes, metadata = read_safetensors_header(path)
    else:
        state, metadata = load_state_dict(path)
        shapes = tensor_shapes(state)
    if any(k.startswith("lora_") for k in shapes):
        from .export.lora_file import summarize_lora

        return {"kind": "lora", "file": str(path), **summarize_lora(path)}
    try:
        arch = analyse_checkpoint(shapes, metadata, path)
    except ModelFormatError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc
    unet = arch.unet_config
    return {
        "kind": "checkpoint",
        "file": str(path),
        "model_type": arch.model_type_label,
        "family": arch.family,
        "prediction_type": arch.prediction_type,
        "prediction_type_source": arch.prediction_source,
        "unet_channels": unet["block_out_channels"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "text_encoders": [
            {
                "hidden_size": te.config["hidden_size"],
                "layers": te.config["num_hidden_layers"],
                "openclip": te.openclip,
            }
            for te in arch.text_encoders
        ],
        "tensors": len(shapes),
        "metadata": dict(metadata),
    }


def format_report(report: dict) -> str:
    lines = [f"{report['file']}: {report['kind']}"]
    for key, value in report.items():
        if key in ("file", "kind", "metadata"):
            continue
        lines.append(f"  {key}: {value}")
    meta = report.get("metadata") or {}
    if meta:
        lines.append(f"  metadata ({len(meta)} keys):")
        for key in sorted(meta):
            text = str(meta[key])
            lines.append(f"    {key}: {text if len(text) <= 100 else text[:97] + '...'}")
    return "\n".join(lines)
