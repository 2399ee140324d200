"""Text and size conditioning for the UNet, computed exactly as the WebUI computes it at generation time.

A LoRA learns against the conditioning it saw in training; if that differs from what the WebUI feeds at
inference (another hidden layer, a missing final norm, other SDXL size ids), the result looks weak or wrong.
SD1: last layer, or layer -clip_skip followed by the final norm. SD2: the penultimate layer with the final
norm (our SD2 encoder already stops there). SDXL: both encoders' penultimate layer without norm,
concatenated, plus the second encoder's pooled projection and the six size/crop numbers.
A learnt trigger embedding (trigger_embedding.py), when given, replaces the trigger word as the WebUI's
embedding support does.
"""

from __future__ import annotations

import torch

from .trigger_embedding import TriggerEmbedding


def tokenize(tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)


def _run_encoder(encoder, tokenizer, captions, device, trigger: TriggerEmbedding | None, index: int, **kw):
    if trigger is None:
        return encoder(tokenize(tokenizer, captions, device), **kw)
    ids, slots = trigger.tokenize(index, tokenizer, captions)
    with trigger.filling(index, slots):
        return encoder(ids.to(device), **kw)


def encode_sd(
    text_encoder,
    tokenizer,
    captions: list[str],
    clip_skip: int,
    device: torch.device,
    trigger: TriggerEmbedding | None = None,
) -> torch.Tensor:
    """SD1/SD2 conditioning; clip_skip uses the WebUI's meaning (1 = last layer)."""
    if clip_skip <= 1:
        return _run_encoder(text_encoder, tokenizer, captions, device, trigger, 0)[0]
    out = _run_encoder(text_encoder, tokenizer, captions, device, trigger, 0, output_hidden_states=True)
    hidden = out.hidden_states[-clip_skip]
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden)


def encode_sdxl(
    text_encoders,
    tokenizers,
    captions: list[str],
    device: torch.device,
    trigger: TriggerEmbedding | None = None,
):
    """(context [B,77,C1+C2], pooled [B,P]) the way SDXL's conditioner builds them."""
    hidden = []
    pooled = None
    for index, (encoder, tokenizer) in enumerate(zip(text_encoders, tokenizers, strict=True)):
        out = _run_encoder(encoder, tokenizer, captions, device, trigger, index, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if index == 1:
            pooled = out.text_embeds
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(
    original_sizes: list[tuple[int, int]],
    crops_top_left: list[tuple[int, int]],
    target_sizes: list[tuple[int, int]],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[orig_h, orig_w, crop_top, crop_left, target_h, target_w] per sample, all (height, width) ordered."""
    rows = [
        list(o) + list(c) + list(t)
        for o, c, t in zip(original_sizes, crops_top_left, target_sizes, strict=True)
    ]
    return torch.tensor(rows, device=device, dtype=dtype)
