"""Write, describe and read back kohya-format LoRA files.

Saving follows kohya: every tensor, `.alpha` included, is cast to the save precision and the `sshs_*` hashes
are computed on the cast tensors, so the recorded hash is the one the WebUI computes from the file.
Reading uses `safe_open`, which maps the file lazily: `inspect` on a 200 MB LoRA reads headers and the tiny
alpha tensors only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch

from .bundled_embedding import PREFIX as BUNDLE_PREFIX
from .metadata import finalize_metadata
from .safe_write import atomic_save_safetensors, atomic_write_json

PathLike = Union[str, "os.PathLike[str]"]

_PRECISIONS = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "full": torch.float32,
}
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")  # the choices of A1111's Lora card editor
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_DTYPE_NAMES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64"}
_TORCH_DTYPE_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


def save_dtype(precision: str) -> torch.dtype:
    key = str(precision).strip().lower()
    if key not in _PRECISIONS:
        raise ValueError(f"unknown save precision {precision!r}: use fp16, bf16 or fp32")
    return _PRECISIONS[key]


def _cast_all(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast and check: a NaN or an fp16 overflow would load fine and then render black images."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"LoRA entry {key!r} is a {type(tensor).__name__}, not a tensor")
        src = tensor.detach().to("cpu")
        if src.is_floating_point() and not bool(torch.isfinite(src).all()):
            raise ValueError(
                f"the LoRA weights contain NaN or infinite values (first in {key!r}): training diverged. "
                "Lower the learning rate, or use bf16 instead of fp16 mixed precision, and train again."
            )
        cast = src.to(dtype).contiguous()
        if cast.is_floating_point() and not bool(torch.isfinite(cast).all()):
            peak = float(src.abs().max())
            raise ValueError(
                f"{key!r} has values too large for {_TORCH_DTYPE_NAMES.get(dtype, dtype)} (largest {peak:.4g}); "
                "save with bf16 or fp32 precision instead."
            )
        out[key] = cast
    return out


def save_lora(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None,
    precision: str = "fp16",
    *,
    overwrite: bool = False,
) -> Path:
    """Save a kohya LoRA atomically; refuse to replace an existing file unless `overwrite=True`.

    `ss_output_name` is set to the file's own name: A1111 uses it as the LoRA's alias, and two files sharing
    an alias (one per epoch, say) would make the WebUI refuse the name.
    """
    target = Path(path)
    if target.suffix.lower() != ".safetensors":
        raise ValueError(f"LoRA files must end in .safetensors, got {target.name!r}")
    if not tensors:
        raise ValueError(f"refusing to write {target.name}: the LoRA has no weights")
    if not overwrite and target.exists():
        raise FileExistsError(
            f"{target} already exists and will not be overwritten: the WebUI caches LoRAs by file name. "
            "Choose another output name or delete the old file."
        )
    cast = _cast_all(tensors, save_dtype(precision))
    meta = dict(metadata or {})
    if any(k.startswith("ss_") for k in meta):
        meta["ss_output_name"] = target.stem
    meta = finalize_metadata(cast, meta)
    return atomic_save_safetensors(target, cast, meta, overwrite=overwrite)


def write_lora_sidecar_json(
    path_json: PathLike,
    *,
    activation_text: str,
    preferred_weight: float,
    sd_version: str,
    description: str = "",
    notes: str = "",
    negative_text: str = "",
) -> Path:
    """The `<lora>.json` the A1111 Lora card reads: trigger words, default weight, SD version filter.

    Keys the user added in the WebUI's editor (an existing file) are kept; ours are updated.
    """
    if sd_version not in SD_VERSIONS:
        raise ValueError(f"sd_version must be one of {', '.join(SD_VERSIONS)}, got {sd_version!r}")
    try:
        weight = float(preferred_weight)
    except (TypeError, ValueError):
        raise ValueError(f"preferred weight must be a number, got {preferred_weight!r}") from None
    target = Path(path_json)
    data: dict[str, Any] = {}
    if target.is_file():
        try:
            loaded = json.loads(target.read_text(encoding="utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            data = {}
    data.update(
        {
            "description": description,
            "sd version": sd_version,
            "activation text": activation_text or "",
            "preferred weight": weight,
            "negative text": negative_text,
            "notes": notes,
        }
    )
    return atomic_write_json(target, data)


# ---- reading back ------------------------------------------------------------------------------------------


def _component(module: str) -> str:
    for prefix, name in (
        ("lora_unet_", "unet"),
        ("lora_te1_", "te1"),
        ("lora_te2_", "te2"),
        ("lora_te_", "te"),
    ):
        if module.startswith(prefix):
            return name
    return "other"


def _read_safetensors(
    path: Path,
) -> tuple[dict[str, list[int]], dict[str, str], dict[str, float], dict[str, str]]:
    """(shapes, dtypes, alpha values, metadata) without loading the weight matrices."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    alphas: dict[str, float] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            names = f.keys()  # safe_open handles are not iterable
            for key in names:
                piece = f.get_slice(key)
                shapes[key] = list(piece.get_shape())
                dtypes[key] = _DTYPE_NAMES.get(piece.get_dtype(), piece.get_dtype().lower())
                if key.endswith(".alpha"):
                    alphas[key] = float(f.get_tensor(key).float().reshape(-1)[0])
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise ValueError(
            f"{path.name} is not a readable safetensors file ({exc}); it may be damaged"
        ) from exc
    return shapes, dtypes, alphas, metadata


def _read_torch(path: Path) -> tuple[dict[str, list[int]], dict[str, str], dict[str, float], dict[str, str]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path.name} could not be read as a PyTorch LoRA file ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = (
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    )
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    dtypes = {
        k: _TORCH_DTYPE_NAMES.get(v.dtype, str(v.dtype).replace("torch.", "")) for k, v in tensors.items()
    }
    alphas = {
        k: float(v.float().reshape(-1)[0]) for k, v in tensors.items() if k.endswith(".alpha") and v.numel()
    }
    return shapes, dtypes, alphas, {}


def _version_from_metadata(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl", "ss_base_model_version"
    if version.startswith("sd_v2"):
        return "sd2", "ss_base_model_version"
    if version.startswith("sd_v1"):
        return "sd1", "ss_base_model_version"
    arch = metadata.get("modelspec.architecture", "")
    for marker, family in (
        ("stable-diffusion-xl", "sdxl"),
        ("stable-diffusion-v2", "sd2"),
        ("stable-diffusion-v1", "sd1"),
    ):
        if arch.startswith(marker):
            return family, "modelspec.architecture"
    return None


def _version_from_keys(shapes: Mapping[str, list[int]]) -> str:
    """Text-encoder width (768 SD1, 1024 SD2) or cross-attention width (768 / 1024 / 2048 SDXL) decides."""
    downs = {k[: -len(".lora_down.weight")]: s for k, s in shapes.items() if k.endswith(".lora_down.weight")}
    if any(m.startswith(("lora_te1_", "lora_te2_")) for m in downs):
        return "sdxl"
    for module, shape in downs.items():
        if module.startswith("lora_te_") and module.endswith("q_proj") and len(shape) >= 2:
            return "sd2" if shape[1] == 1024 else "sd1"
    for module, shape in downs.items():
        if module.endswith("attn2_to_k") and len(shape) >= 2:
            return {2048: "sdxl", 1024: "sd2"}.get(shape[1], "sd1")
    if any(
        m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
        for m in downs
    ):
        return "sdxl"  # kohya names SDXL UNet modules by their LDM path
    return "sd1"


def _prediction(metadata: Mapping[str, str]) -> str:
    if metadata.get("modelspec.prediction_type") in ("v", "epsilon"):
        return metadata["modelspec.prediction_type"]
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sd_"):
        return "v" if version.endswith("_v") else "epsilon"
    return "unknown"


def _one_or_list(values: set[Any]) -> Any:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[0] if len(ordered) == 1 else ordered


def summarize_lora(path: PathLike) -> dict[str, Any]:
    """What `inspect` reports about a kohya LoRA: architecture, modules, ranks, alphas, dtypes, metadata."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"LoRA file not found: {p}")
    reader = _read_safetensors if p.suffix.lower() == ".safetensors" else _read_torch
    shapes, dtypes, alphas, metadata = reader(p)
    modules = {k.split(".", 1)[0] for k in shapes if k.endswith(_SUFFIXES)}
    other_keys = [k for k in shapes if not k.endswith(_SUFFIXES)]
    if not modules:
        raise ValueError(
            f"{p.name} has no kohya LoRA weights (.lora_down/.lora_up/.alpha); it is probably not a LoRA "
            "or uses another format (LyCORIS LoHa/LoKr, diffusers/PEFT)"
        )
    components: dict[str, int] = {}
    for module in sorted(modules):
        comp = _component(module)
        components[comp] = components.get(comp, 0) + 1
    found = _version_from_metadata(metadata)
    family, source = found if found is not None else (_version_from_keys(shapes), "key names")
    ranks = {s[0] for k, s in shapes.items() if k.endswith(".lora_down.weight") and s}
    with_alpha = {k.split(".", 1)[0] for k in alphas}
    bundled = {  # embedding name -> vectors (network.learn_trigger), as the WebUI will register it
        k[len(BUNDLE_PREFIX) :].split(".", 1)[0]: s[0]
        for k, s in shapes.items()
        if k.startswith(BUNDLE_PREFIX) and s
    }
    return {
        "architecture": family,
        "architecture_source": source,
        "prediction_type": _prediction(metadata),
        "modules": len(modules),
        "keys": len(shapes),
        "components": components,
        "rank": _one_or_list(ranks),
        "alpha": _one_or_list(set(alphas.values())),
        "modules_without_alpha": len(modules - with_alpha),
        "dtypes": sorted(set(dtypes.values())),
        "other_keys": len([k for k in other_keys if not k.startswith(BUNDLE_PREFIX)]),
        "bundled_embeddings": bundled,
        "metadata": metadata,
    }
