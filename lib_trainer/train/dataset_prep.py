"""From a scanned dataset to bucketed batches of cached latents.

Each image gets one bucket; repeats are entries pointing at the same image, as in kohya. Latents are
encoded once per (image content, bucket, flip, VAE) and kept in memory and, if asked, on disk. We cache the
VAE's mean and log-variance rather than one sample, so every step still draws a fresh latent sample as
uncached training would, at no extra VAE cost.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.buckets import BucketManager, format_bucket_summary, make_batches
from ..data.captions import build_caption
from ..data.images import load_training_image
from ..data.latent_cache import LatentCache


@dataclass
class Sample:
    item: object  # data.scan.ImageItem
    bucket: tuple[int, int]  # (width, height)
    resized: tuple[int, int]
    original_hw: tuple[int, int] = (0, 0)
    crop_tl: dict[bool, tuple[int, int]] = field(default_factory=dict)
    cache_keys: dict[bool, str] = field(default_factory=dict)  # computed once: keys hash the file's content


@dataclass
class PreparedData:
    samples: list[Sample]
    entries: list[int]  # one per repeat, index into samples
    batch_size: int
    seed: int
    bucket_counts: dict[tuple[int, int], int]
    mean_ar_error: float

    def batches(self, epoch: int) -> list[list[int]]:
        """Lists of entry indices; same bucket per batch, order fixed by (seed, epoch)."""
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for entry, sample_index in enumerate(self.entries):
            by_bucket.setdefault(self.samples[sample_index].bucket, []).append(entry)
        return make_batches(by_bucket, self.batch_size, self.seed, epoch)

    def bucket_summary(self) -> str:
        return format_bucket_summary(self.bucket_counts, self.mean_ar_error)

    def bucket_info(self) -> dict:
        """kohya's ss_bucket_info structure."""
        buckets = {
            str(i): {"resolution": list(b), "count": c}
            for i, (b, c) in enumerate(sorted(self.bucket_counts.items()))
        }
        return {"buckets": buckets, "mean_img_ar_error": self.mean_ar_error}


def assign_buckets(scan, manager: BucketManager, batch_size: int, seed: int) -> PreparedData:
    samples, entries, errors = [], [], []
    counts: Counter = Counter()
    for item in scan.items:
        choice = manager.select_bucket(item.width, item.height)
        samples.append(Sample(item, tuple(choice.bucket), tuple(choice.resized)))
        errors.append(abs(choice.ar_error))
        counts[tuple(choice.bucket)] += item.repeats
        entries.extend([len(samples) - 1] * item.repeats)
    mean_error = float(sum(errors) / len(errors)) if errors else 0.0
    return PreparedData(samples, entries, batch_size, seed, dict(counts), mean_error)


class LatentSource:
    """Hands out latent distribution parameters [2C, h, w] for (sample, flip), encoding when not cached."""

    def __init__(
        self, data: PreparedData, vae, cache: LatentCache | None, device: torch.device, cache_on: bool
    ):
        self.data = data
        self.vae = vae
        self.cache = cache
        self.device = device
        self.cache_on = cache_on
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    def _shape(self, sample: Sample) -> tuple[int, int, int]:
        w, h = sample.bucket
        return (2 * self.latent_channels, h // self.downscale, w // self.downscale)

    @torch.no_grad()
    def _encode(self, sample: Sample, flip: bool) -> torch.Tensor:
        pixels, original_hw, crop_tl = load_training_image(
            sample.item.path, sample.bucket, sample.resized, flip
        )
        sample.original_hw = tuple(original_hw)
        sample.crop_tl[flip] = tuple(crop_tl)
        vae_dtype = next(self.vae.parameters()).dtype
        pixels = pixels.unsqueeze(0).to(self.device, vae_dtype)
        params = self.vae.encode(pixels).latent_dist.parameters[0].float()
        if not torch.isfinite(params).all():
            raise ValueError(
                f"the VAE produced NaN/inf for {sample.item.path}; use a VAE that works in full precision "
                "or check the image"
            )
        return params.cpu()

    def _ensure_geometry(self, sample: Sample, flip: bool) -> None:
        """Size/crop numbers for SDXL conditioning without decoding the image again."""
        if flip in sample.crop_tl:
            return
        from ..data.buckets import crop_top_left

        sample.original_hw = (sample.item.height, sample.item.width)
        top, left = crop_top_left(sample.resized, sample.bucket)
        if flip:
            left = sample.resized[0] - sample.bucket[0] - left
        sample.crop_tl[flip] = (top, left)

    def get(self, sample_index: int, flip: bool) -> torch.Tensor:
        sample = self.data.samples[sample_index]
        if not self.cache_on or self.cache is None:
            return self._encode(sample, flip)
        key = sample.cache_keys.get(flip)
        if key is None:
            key = sample.cache_keys[flip] = self.cache.key_for(sample.item.path, sample.bucket, flip)
        cached = self.cache.get(key, self._shape(sample))
        if cached is not None:
            self._ensure_geometry(sample, flip)
            return cached
        params = self._encode(sample, flip)
        self.cache.put(key, params, bucket=sample.bucket)
        return params

    def warm(self, flips: tuple[bool, ...], progress=None) -> int:
        """Encode everything up front (the VAE can then leave the GPU); returns how many were encoded."""
        total = len(self.data.samples) * len(flips)
        done = 0
        for index in range(len(self.data.samples)):
            for flip in flips:
                self.get(index, flip)
                done += 1
                if progress is not None:
                    progress(done, total)
        return total


def sample_latents(params: torch.Tensor, generator: torch.Generator, scaling: float) -> torch.Tensor:
    """Draw z ~ N(mean, std) from cached parameters, scaled for the UNet."""
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    return (mean + std * eps) * scaling


def captions_for(entries: list[int], data: PreparedData, dataset_spec, rng: random.Random) -> list[str]:
    out = []
    for entry in entries:
        item = data.samples[data.entries[entry]].item
        out.append(
            build_caption(
                item.caption,
                class_tokens=item.class_tokens,
                trigger_word=dataset_spec.trigger_word,
                prepend_trigger=dataset_spec.prepend_trigger_word,
                shuffle=dataset_spec.shuffle_captions,
                keep_tokens=dataset_spec.keep_tokens,
                dropout_rate=dataset_spec.caption_dropout,
                rng=rng,
            )
        )
    return out


def training_size(spec) -> tuple[int, int]:
    """(width, height) of training.resolution, which may be one number or [width, height]."""
    res = spec.training.resolution
    return (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))


def default_cache_dir(dataset_path: Path) -> Path:
    return Path(dataset_path) / ".lora-trainer-cache"
