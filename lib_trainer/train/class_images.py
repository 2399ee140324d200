"""Class images for DreamBooth prior preservation: made once by the base model itself, then cached.

Prior preservation trains on pictures of the subject's class ("a photo of a dog") as the untouched base model
draws them, with the same VAE and CLIP skip as the job, so they must come from that model. Making them takes
minutes, so they are cached under a key of model + prompt + settings: the next job with the same base model
and class prompt reuses them and only makes the ones still missing. Image i always uses seed + i, so an image
is the same whichever job, batch or call makes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from ..export.safe_write import atomic_write_bytes, atomic_write_json, write_atomically
from .sampling import SAMPLERS, build_pipeline, text_inputs

KEY_VERSION = 1  # bump when generation changes in a way that makes old cached images wrong
BATCH_SIZE = 4
PROGRESS_EVERY_S = 5.0
_EDGE_BYTES = 1 << 20  # how much of each end of a model file the fingerprint reads


class ClassImagesStopped(Exception):
    """`should_stop()` asked to stop between batches; the images made so far stay cached for next time."""

    def __init__(self, done: int, missing: int):
        super().__init__(f"class image generation stopped after {done}/{missing} images")
        self.done = done
        self.missing = missing


@dataclass
class ClassImageSet:
    folder: Path  # the cache folder: class_NNNNN.png + class_NNNNN.txt (the class prompt) + settings.json
    images: list[Path]  # exactly `count` images, sorted
    generated: int  # made in this call
    reused: int  # already there


@dataclass(frozen=True)
class ClassImageSettings:
    prompt: str
    negative_prompt: str
    count: int
    width: int
    height: int
    sampler: str  # a key of sampling.SAMPLERS: "euler_a" | "euler" | "ddim" | "dpmpp_2m"
    steps: int
    cfg_scale: float
    clip_skip: int
    seed: int  # base seed; image i uses seed + i, so image i is the same whoever makes it


def model_fingerprint(checkpoint: Path, vae: Path | None) -> str:
    """A cheap, stable identity of the base model + VAE files (sha256 hex).

    Per file: size, mtime_ns and the first and last 1 MiB, not a full hash: hashing a 7 GB checkpoint would
    add about a minute to every job. Replacing or editing a file changes its mtime (and usually its size and
    header), so the fingerprint changes; a copy of the same file with a new mtime only costs a regeneration.
    Settings that change the model without changing the files (a forced prediction type) are not in here:
    the caller should append them to the fingerprint.
    """
    digest = hashlib.sha256()
    for role, path in (("checkpoint", checkpoint), ("vae", vae)):
        digest.update(role.encode())
        if path is None:
            digest.update(b"-none-")
            continue
        stat = Path(path).stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        with Path(path).open("rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            if stat.st_size > _EDGE_BYTES:
                f.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
                digest.update(f.read(_EDGE_BYTES))
    return digest.hexdigest()


def cache_key(fingerprint: str, settings: ClassImageSettings) -> str:
    """First 16 hex chars of a sha256 over the fingerprint and every setting but count and seed: count only
    decides how many images are wanted and each index has its own seed, so neither changes what an image is."""
    fields = asdict(settings)
    del fields["count"], fields["seed"]
    fields["cfg_scale"] = float(fields["cfg_scale"])  # 7 and 7.0 are the same setting
    payload = json.dumps({"version": KEY_VERSION, "model": fingerprint, **fields}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _usable(path: Path, size: tuple[int, int]) -> bool:
    """Only an image that decodes fully at the expected size counts (writes are atomic, but a disk or a user
    can still leave a broken or foreign file under the name)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.size == size
    except Exception:  # PIL raises many types for broken files; all mean "make it again"
        return False


def _write_caption(image: Path, prompt: str) -> None:
    caption = image.with_suffix(".txt")
    data = prompt.encode("utf-8")
    with contextlib.suppress(OSError):
        if caption.read_bytes() == data:
            return
    atomic_write_bytes(caption, data)


@contextlib.contextmanager
def _drawing(modules: list[torch.nn.Module], device: torch.device, autocast_dtype: torch.dtype | None):
    """Eval mode, no grad, autocast; afterwards the training modes and the global CPU random state are as
    before, so seeded training does not depend on whether class images were cached."""
    was_training = [m.training for m in modules]
    cpu_rng_state = torch.get_rng_state()
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    try:
        for m in modules:
            m.eval()
        with torch.no_grad(), autocast:
            yield
    finally:
        for m, training in zip(modules, was_training, strict=True):
            m.train(training)
        torch.set_rng_state(cpu_rng_state)


def ensure_class_images(
    base,
    settings: ClassImageSettings,
    cache_root: Path,
    *,
    fingerprint: str,
    training_scheduler,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    events=None,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int = BATCH_SIZE,
) -> ClassImageSet:
    """Make sure `settings.count` class images exist in the cache; generate only the missing ones.

    Must run before LoRA layers are added: it draws with `base` as it is, whose modules must already be on
    `device` (used here for autocast). Each image gets its own generator seeded seed + index, so its pixels
    do not depend on which images share its batch. Raises `ClassImagesStopped` if `should_stop()` turns
    true between batches.
    """
    folder = Path(cache_root) / cache_key(fingerprint, settings)
    if settings.count < 0:
        raise ValueError(f"class image count must be 0 or more, not {settings.count}")
    if settings.count == 0:
        return ClassImageSet(folder, [], 0, 0)
    if settings.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {settings.sampler!r}; use one of {', '.join(SAMPLERS)}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "settings.json", {**asdict(settings), "fingerprint": fingerprint})
    images = [folder / f"class_{i:05d}.png" for i in range(settings.count)]
    missing = [i for i, path in enumerate(images) if not _usable(path, (settings.width, settings.height))]
    for i, path in enumerate(images):
        if i not in missing:
            _write_caption(path, settings.prompt)
    if missing:
        # CLIP skip is applied by text_inputs (training's own text path)
        pipe = build_pipeline(base, settings.sampler, training_scheduler)
        pipe.set_progress_bar_config(disable=True)
        done, last_report, step = 0, time.monotonic(), max(1, batch_size)
        with _drawing([base.unet, base.vae, *base.text_encoders], device, autocast_dtype):
            for start in range(0, len(missing), step):
                if should_stop is not None and should_stop():
                    raise ClassImagesStopped(done, len(missing))
                batch = missing[start : start + step]
                out = pipe(
                    **text_inputs(
                        base,
                        settings.prompt,
                        settings.negative_prompt,
                        len(batch),
                        settings.clip_skip,
                        device,
                    ),
                    width=settings.width,
                    height=settings.height,
                    guidance_scale=settings.cfg_scale,
                    num_inference_steps=settings.steps,
                    generator=[torch.Generator(device="cpu").manual_seed(settings.seed + i) for i in batch],
                )
                for index, image in zip(batch, out.images, strict=True):
                    write_atomically(images[index], lambda tmp, im=image: im.save(tmp, format="PNG"))
                    _write_caption(images[index], settings.prompt)
                done += len(batch)
                if events is not None and (
                    done == len(missing) or time.monotonic() - last_report >= PROGRESS_EVERY_S
                ):
                    last_report = time.monotonic()
                    events.emit("info", message=f"class images {done}/{len(missing)}")
    result = ClassImageSet(folder, images, generated=len(missing), reused=settings.count - len(missing))
    if events is not None:
        counts = {"generated": result.generated, "reused": result.reused, "total": settings.count}
        events.emit("class_images", **counts, folder=str(folder))
    return result
