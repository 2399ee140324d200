"""Textual-inversion embeddings bundled into a LoRA file, in the key layout the WebUI reads.

A1111 (extensions-builtin/Lora/networks.py, `load_network`) registers every `bundle_emb.<name>.*` entry of
a LoRA file as an embedding called <name> while that LoRA is in the prompt: SD1/SD2 embeddings as
`bundle_emb.<name>.string_to_param.*` [vectors, width], SDXL ones as `bundle_emb.<name>.clip_l` and
`bundle_emb.<name>.clip_g`. The name is split off at the first dot, so it cannot contain one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

PREFIX = "bundle_emb."
SD_KEY = "string_to_param.*"
SDXL_KEYS = ("clip_l", "clip_g")  # text encoder 1 (CLIP ViT-L), text encoder 2 (OpenCLIP bigG)


def bundle_tensors(name: str, vectors: Sequence[torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """The file entries for embedding `name`: one [vectors, width] tensor per text encoder."""
    if "." in name:
        raise ValueError(f"an embedding name cannot contain a dot (got {name!r})")
    tensors = [v.detach().to("cpu", torch.float32).contiguous() for v in vectors]
    if family == "sdxl":
        if len(tensors) != 2:
            raise ValueError(f"an SDXL embedding needs vectors for both text encoders (got {len(tensors)})")
        return {f"{PREFIX}{name}.{key}": t for key, t in zip(SDXL_KEYS, tensors, strict=True)}
    if len(tensors) != 1:
        raise ValueError(f"an SD1/SD2 embedding has vectors for one text encoder (got {len(tensors)})")
    return {f"{PREFIX}{name}.{SD_KEY}": tensors[0]}


def read_bundled_embeddings(tensors: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """name -> vectors per text encoder (in text-encoder order), for every bundled embedding in a file."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(PREFIX):
            name, _, rest = key[len(PREFIX) :].partition(".")
            parts.setdefault(name, {})[rest] = value
    out = {}
    for name, found in parts.items():
        if SD_KEY in found:
            out[name] = [found[SD_KEY]]
        elif all(k in found for k in SDXL_KEYS):
            out[name] = [found[k] for k in SDXL_KEYS]
        else:
            raise ValueError(
                f"bundled embedding {name!r} has entries {sorted(found)}, not an SD or SDXL layout"
            )
    return out


def is_bundle_key(key: str) -> bool:
    return key.startswith(PREFIX)
