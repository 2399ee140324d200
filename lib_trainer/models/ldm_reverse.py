"""From diffusers / transformers modules back to the WebUI's single-file (LDM) layout.

diffusers converts LDM files to its own layout (renames, 1x1-conv <-> linear reshapes, OpenCLIP's fused
q/k/v split in three, a transposed text projection) but has no way back inside the library. Instead of a
second hand-written table that could drift from the forward one, the way back is *measured* on the forward
conversion itself: every LDM tensor is replaced by a probe whose value at row r is `key_id * 2^24 + r`
(a stride-0 view, so a full SDXL probe costs almost no memory), the probe goes through the same conversion
the loader uses, and each converted tensor tells which LDM key and rows it came from. Writing back is then
slicing, reshaping and (for transposed tensors) transposing - and the caller checks the result round-trips
exactly on the base model before trusting it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_ROWS = 2**24  # row numbers stay below this (the largest dim 0 in SD files is 49408 tokens)


@dataclass(frozen=True)
class Piece:
    """Rows [src_row, src_row + rows) of converted tensor `source` fill LDM rows [row, row + rows)."""

    source: str
    src_row: int
    row: int
    rows: int
    transposed: bool = False


def _probe(key_id: int, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 0:
        return torch.tensor(float(key_id * _ROWS), dtype=torch.float64)
    rows = torch.arange(shape[0], dtype=torch.float64) + float(key_id * _ROWS)
    return rows.view(-1, *([1] * (len(shape) - 1))).expand(*shape)


def reverse_map(
    shapes: dict[str, torch.Size], convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
) -> dict[str, list[Piece]]:
    """LDM key -> the pieces of converted tensors that rebuild it, measured by running `convert` on probes."""
    keys = sorted(shapes)
    converted = convert({k: _probe(i, torch.Size(shapes[k])) for i, k in enumerate(keys)})
    out: dict[str, list[Piece]] = {}
    for name, tensor in converted.items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point() or tensor.dtype != torch.float64:
            continue  # made up by the conversion (e.g. position ids), not read from the file
        first = tensor.reshape(-1)[:1] if tensor.dim() == 0 else tensor.reshape(tensor.shape[0], -1)[:, 0]
        ids = torch.div(first, _ROWS, rounding_mode="floor").long().tolist()
        rows = (first - torch.tensor(ids, dtype=torch.float64) * _ROWS).long().tolist()
        src = keys[ids[0]]
        ldm_shape = torch.Size(shapes[src])
        if (
            tensor.dim() == 2
            and len(set(ids)) == 1
            and len(rows) > 1
            and len(set(rows)) == 1
            and tuple(ldm_shape) == tuple(tensor.shape[::-1])
        ):
            out.setdefault(src, []).append(Piece(name, 0, 0, ldm_shape[0], transposed=True))
            continue
        start = 0
        for i in range(1, len(ids) + 1):  # runs of consecutive rows of one key
            if i == len(ids) or ids[i] != ids[start] or rows[i] != rows[i - 1] + 1:
                out.setdefault(keys[ids[start]], []).append(Piece(name, start, rows[start], i - start))
                start = i
    return out


def to_ldm(
    converted: dict[str, torch.Tensor], mapping: dict[str, list[Piece]], shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """The LDM tensors rebuilt from converted-layout tensors (e.g. a fine-tuned UNet's state_dict)."""
    out: dict[str, torch.Tensor] = {}
    for key, pieces in mapping.items():
        shape = torch.Size(shapes[key])
        if (
            len(pieces) == 1
            and pieces[0].rows == (shape[0] if len(shape) else 1)
            and not pieces[0].transposed
        ):
            out[key] = converted[pieces[0].source].reshape(shape).contiguous()
            continue
        if len(pieces) == 1 and pieces[0].transposed:
            out[key] = converted[pieces[0].source].t().reshape(shape).contiguous()
            continue
        first = converted[pieces[0].source]
        target = torch.empty(shape, dtype=first.dtype, device=first.device)
        for piece in pieces:
            part = converted[piece.source]
            part = part.reshape(part.shape[0], -1)[piece.src_row : piece.src_row + piece.rows]
            target[piece.row : piece.row + piece.rows] = part.reshape(piece.rows, *shape[1:])
        out[key] = target
    return out


def model_to_ldm(
    base, base_state: dict[str, torch.Tensor], *, text_encoders: bool = True
) -> dict[str, torch.Tensor]:
    """The base file's state dict with the UNet (and text encoders) replaced by `base`'s current weights, in
    the file's own layout. Everything else - the VAE as the base file had it, buffers, EMA or extra keys - is
    kept from the file, so the result has exactly the base file's keys and shapes."""
    from .loader import convert_text_encoder_state, convert_unet_state

    arch = base.arch
    shapes = {k: v.shape for k, v in base_state.items()}
    parts: list[tuple[str, Callable, torch.nn.Module]] = [
        ("model.diffusion_model.", lambda st: convert_unet_state(st, arch.unet_config), base.unet)
    ]
    if text_encoders:
        for info, encoder in zip(arch.text_encoders, base.text_encoders, strict=True):
            parts.append((info.prefix, lambda st, info=info: convert_text_encoder_state(st, info), encoder))
    out = dict(base_state)
    for prefix, convert, module in parts:
        own = {k: s for k, s in shapes.items() if k.startswith(prefix)}
        mapping = reverse_map(own, convert)
        weights = {k: v.detach().to("cpu") for k, v in module.state_dict().items()}  # no GPU copy
        for key, tensor in to_ldm(weights, mapping, own).items():
            # trained weights keep their (fp32 master) precision; the caller casts to the save precision
            out[key] = tensor if tensor.is_floating_point() else tensor.to(base_state[key].dtype)
    return out
