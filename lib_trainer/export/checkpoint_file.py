"""Write a fine-tuned model as a single-file checkpoint the WebUI loads like any other.

The file is the base checkpoint with the trained parts replaced: `models.ldm_reverse.model_to_ldm` turns the
trained diffusers modules back into the base file's own keys, and everything else (the VAE as the base had
it, extra keys, an old EMA) is copied unchanged, so the key set and shapes are exactly the base file's.
Floating-point tensors are cast to the save precision (integer ones, such as position ids, keep theirs) and
checked for NaN/overflow before anything is written; the file goes through a temp name and never replaces an
existing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from .lora_file import save_dtype
from .safe_write import atomic_save_safetensors


def cast_checkpoint(tensors: Mapping[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """Floating tensors in the save precision; a NaN or an fp16 overflow would load and then draw black."""
    dtype = save_dtype(precision)
    out = {}
    for key, tensor in tensors.items():
        src = tensor.detach().to("cpu")
        if not src.is_floating_point():
            out[key] = src.contiguous()
            continue
        if not bool(torch.isfinite(src).all()):
            raise ValueError(
                f"the trained model contains NaN or infinite values (first in {key!r}): training diverged. "
                "Lower the learning rate, or use bf16 instead of fp16 mixed precision, and train again."
            )
        cast = src.to(dtype).contiguous()
        if not bool(torch.isfinite(cast).all()):
            raise ValueError(
                f"{key!r} has values too large for {precision} (largest {float(src.abs().max()):.4g}); "
                "save with bf16 or fp32 precision instead (output.save_precision)."
            )
        out[key] = cast
    return out


def save_checkpoint(
    path: Path,
    base,
    base_path: Path,
    *,
    text_encoders: bool,
    precision: str,
    metadata: Mapping[str, str],
) -> Path:
    """Save `base` (a models.loader.BaseModel holding the trained weights) over `base_path`'s layout."""
    from ..models.checkpoint_io import load_state_dict
    from ..models.ldm_reverse import model_to_ldm

    target = Path(path)
    if target.suffix.lower() != ".safetensors":
        raise ValueError(f"checkpoints are saved as .safetensors, got {target.name!r}")
    if target.exists():
        raise FileExistsError(f"{target} already exists and will not be overwritten; choose another name")
    base_state, _ = load_state_dict(base_path)
    tensors = cast_checkpoint(model_to_ldm(base, base_state, text_encoders=text_encoders), precision)
    del base_state
    return atomic_save_safetensors(target, tensors, dict(metadata), overwrite=False)
