"""Aspect-ratio bucketing with kohya's exact rules, so users get the bucket lists they already know.

Each image is assigned a bucket (a training size with about the training area), scaled to cover it and
centre-cropped. Batches are only ever formed from one bucket, since a batch tensor needs one size.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .errors import DatasetError

Size = tuple[int, int]  # (width, height), as kohya and PIL use them


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes: its bucket, the size it is resized to before the centre crop, and
    kohya's signed aspect-ratio error (bucket AR minus image AR)."""

    bucket: Size
    resized: Size
    ar_error: float


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """kohya's bucket list: the square of the training area plus, for every width on the step grid, the
    tallest height (on the grid, capped at max_size) that keeps the area within the training area."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, (max_area // width) // divisible * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


def snap_min_max(min_size: int, max_size: int, step: int) -> tuple[int, int]:
    """kohya rounds min_bucket_reso down and max_bucket_reso up to multiples of the step."""
    return min_size - min_size % step, max_size + (-max_size % step)


def validate_bucket_settings(
    resolution: int | Size, min_size: int, max_size: int, step: int, arch_step: int
) -> tuple[int, int]:
    """Check bucket settings before any work is done; returns (min, max) snapped to the step.

    `arch_step` is what the model needs (64 for SD1/SD2, 32 for SDXL): bucket sides must be multiples of
    it or the UNet's down/up-sampling shapes stop matching.
    """
    width, height = _as_size(resolution)
    if width <= 0 or height <= 0:
        raise DatasetError(f"must be positive, got {width}x{height}.", field="training.resolution")
    if not isinstance(step, int) or step <= 0 or step % arch_step != 0:
        raise DatasetError(
            f"{step} does not work with this model: it must be a multiple of {arch_step} "
            f"(e.g. {arch_step} or {arch_step * 2}).",
            field="dataset.bucket_reso_steps",
        )
    if min_size <= 0:
        raise DatasetError(f"must be positive, got {min_size}.", field="dataset.min_bucket_reso")
    if max_size < min_size:
        raise DatasetError(
            f"{max_size} is smaller than dataset.min_bucket_reso ({min_size}); raise it.",
            field="dataset.max_bucket_reso",
        )
    lo, hi = snap_min_max(min_size, max_size, step)
    if lo < step:
        raise DatasetError(
            f"{min_size} is smaller than one bucket step ({step}); use at least {step}.",
            field="dataset.min_bucket_reso",
        )
    if min(width, height) < lo:
        raise DatasetError(
            f"{lo} is larger than the training resolution {width}x{height}; lower dataset.min_bucket_reso "
            f"to at most {min(width, height)} or raise training.resolution.",
            field="dataset.min_bucket_reso",
        )
    if max(width, height) > hi:
        raise DatasetError(
            f"{hi} is smaller than the training resolution {width}x{height}; raise dataset.max_bucket_reso "
            f"to at least {max(width, height)} or lower training.resolution.",
            field="dataset.max_bucket_reso",
        )
    return lo, hi


class BucketManager:
    """Assigns images to buckets for one training resolution.

    Modes: the predefined kohya bucket list (default); `no_upscale`, where each image gets its own bucket
    no larger than itself; and `fixed`, a single bucket of exactly the training resolution (bucketing off:
    every image is scaled to cover it and centre-cropped).
    """

    def __init__(
        self,
        resolution: int | Size,
        min_size: int = 256,
        max_size: int = 1024,
        step: int = 64,
        no_upscale: bool = False,
        *,
        fixed: bool = False,
    ):
        if step <= 0:
            raise DatasetError(f"must be positive, got {step}.", field="dataset.bucket_reso_steps")
        self.max_reso = _as_size(resolution)
        self.max_area = self.max_reso[0] * self.max_reso[1]
        self.step = step
        self.no_upscale = no_upscale and not fixed
        self.fixed = fixed
        self.min_size, self.max_size = snap_min_max(min_size, max_size, step)
        if fixed:
            self.resolutions = [self.max_reso]
        elif self.no_upscale:
            self.resolutions = []  # made per image
        else:
            self.resolutions = make_bucket_resolutions(self.max_reso, self.min_size, self.max_size, step)
        self._resolution_set = set(self.resolutions)

    def select_bucket(self, width: int, height: int) -> BucketChoice:
        """The bucket and resize size for an image of `width` x `height` (after EXIF rotation)."""
        if width <= 0 or height <= 0:
            raise DatasetError(f"an image has no pixels ({width}x{height}); remove it from the dataset.")
        aspect = width / height
        if self.no_upscale:
            resized = self._no_upscale_size(width, height)
            bucket = (resized[0] - resized[0] % self.step, resized[1] - resized[1] % self.step)
            if bucket[0] == 0 or bucket[1] == 0:
                raise DatasetError(
                    f"an image of {width}x{height} px would get a side shorter than one bucket step "
                    f"({self.step} px), which dataset.bucket_no_upscale cannot handle (it never enlarges). "
                    "Crop or remove that image (very small or very long and narrow), or turn bucket_no_upscale off.",
                    field="dataset.bucket_no_upscale",
                )
        else:
            bucket = (width, height) if (width, height) in self._resolution_set else self._closest(aspect)
            resized = cover_size(width, height, bucket)
        return BucketChoice(bucket, resized, bucket[0] / bucket[1] - aspect)

    def _closest(self, aspect: float) -> Size:
        """Smallest |AR error|; on a tie the first in sorted order wins (numpy argmin, as kohya)."""
        best, best_error = self.resolutions[0], math.inf
        for reso in self.resolutions:
            error = abs(reso[0] / reso[1] - aspect)
            if error < best_error:
                best, best_error = reso, error
        return best

    def _no_upscale_size(self, width: int, height: int) -> Size:
        """kohya: shrink to the training area keeping AR, rounding the side that loses the least AR."""
        if width * height <= self.max_area:
            return (width, height)
        aspect = width / height
        target_w = math.sqrt(self.max_area * aspect)
        target_h = self.max_area / target_w
        w_rounded = self._round_to_step(target_w)
        h_for_w = self._round_to_step(w_rounded / aspect)
        h_rounded = self._round_to_step(target_h)
        w_for_h = self._round_to_step(h_rounded * aspect)
        error_w = abs(w_rounded / h_for_w - aspect) if h_for_w else math.inf
        error_h = abs(w_for_h / h_rounded - aspect) if h_rounded else math.inf
        if error_w < error_h:
            return (w_rounded, int(w_rounded / aspect + 0.5))
        return (int(h_rounded * aspect + 0.5), h_rounded)

    def _round_to_step(self, value: float) -> int:
        """kohya's round_to_steps: round to a whole pixel, then floor to the step."""
        pixels = int(value + 0.5)
        return pixels - pixels % self.step


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """Scale (width, height) so it covers `bucket`: match height if the image is wider, else width."""
    if width / height > bucket[0] / bucket[1]:
        scale = bucket[1] / height
    else:
        scale = bucket[0] / width
    return (int(width * scale + 0.5), int(height * scale + 0.5))


def crop_ltrb(resized: Size, bucket: Size) -> tuple[int, int, int, int]:
    """Centred crop box (left, top, right, bottom) of `bucket` inside the resized image (kohya's trim)."""
    left = (resized[0] - bucket[0]) // 2
    top = (resized[1] - bucket[1]) // 2
    if left < 0 or top < 0:
        raise ValueError(f"resized size {resized} does not cover bucket {bucket}")
    return (left, top, left + bucket[0], top + bucket[1])


def crop_top_left(resized: Size, bucket: Size) -> tuple[int, int]:
    """(top, left) of the centred crop in resized pixels: SDXL's crop conditioning (before any flip)."""
    left, top, _, _ = crop_ltrb(resized, bucket)
    return (top, left)


def make_batches(
    assignments: dict[Size, list[int]], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Batches that never mix buckets; contents and batch order reshuffled per epoch from seed + epoch.

    The last, smaller batch of each bucket is kept (kohya does the same), so no image is skipped.
    """
    if batch_size < 1:
        raise DatasetError(f"must be at least 1, got {batch_size}.", field="training.batch_size")
    rng = random.Random(seed + epoch)
    batches = []
    for bucket in sorted(assignments):
        members = list(assignments[bucket])
        rng.shuffle(members)
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches


def format_bucket_summary(counts: dict[Size, int], mean_ar_error: float | None = None) -> str:
    """A small table for the log: one row per bucket with its image count (repeats included)."""
    total = sum(counts.values())
    lines = [f"{'bucket (w x h)':>16}  {'aspect':>6}  {'images':>7}"]
    for (w, h), count in sorted(counts.items()):
        lines.append(f"{f'{w} x {h}':>16}  {w / h:>6.2f}  {count:>7}")
    lines.append(f"{len(counts)} bucket(s), {total} image(s) per epoch incl. repeats")
    if mean_ar_error is not None:
        lines.append(f"mean aspect-ratio error: {mean_ar_error:.4f}")
    return "\n".join(lines)


def _as_size(resolution: int | Size) -> Size:
    if isinstance(resolution, int):
        return (resolution, resolution)
    width, height = resolution
    return (int(width), int(height))
