"""The live dataset summary of the Train LoRA tab: what training will see in a folder, before it starts.

It reuses the trainer's own folder scan and bucket rules (never a copy of them), so the counts and buckets
shown while typing are the ones the run will use. Runs in the WebUI's process: no torch here.
"""

from __future__ import annotations

import dataclasses
import html
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.buckets import BucketManager, validate_bucket_settings
from ..data.captions import build_caption
from ..data.errors import DatasetError
from ..data.scan import DatasetScan, ImageItem, normalize_caption_extension, scan_dataset
from ..spec.schema import DatasetSpec, Invalid, TrainingSpec

MAX_LISTED = 10  # file names kept in missing_captions / empty_captions
_SHOW = 5  # file names a warning lists before "and N more"
_SHOW_BUCKETS = 8
_BLURRY_SCALE = 2.0  # enlarged more than this: visibly soft
_MANY_ENLARGED = 1 / 3  # share of enlarged images worth a warning
_SDXL_AREA = 900_000  # with no model type given, a training area this big is taken to mean SDXL
EMPTY_PATH_PROBLEM = "Type the folder that holds your training images."


@dataclass
class DatasetSummary:
    """Numbers and messages for one folder; `ok` means training could start with it."""

    folder: str
    ok: bool = False
    image_count: int = 0
    train_images: int = 0
    subsets: list[tuple[str, int, int]] = field(default_factory=list)  # (folder, repeats, images)
    captioned: int = 0
    caption_coverage: float = 0.0
    missing_captions: list[str] = field(default_factory=list)
    empty_captions: list[str] = field(default_factory=list)
    buckets: list[tuple[int, int, int]] = field(default_factory=list)  # (width, height, images)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def summarize_dataset(
    path: str,
    *,
    caption_extension: str = ".txt",
    trigger_word: str = "",
    prepend_trigger_word: bool = False,
    resolution: int | tuple[int, int] = 512,
    enable_bucket: bool = True,
    min_bucket_reso: int = 256,
    max_bucket_reso: int | None = None,
    bucket_reso_steps: int | None = None,
    bucket_no_upscale: bool = False,
    model_type: str | None = None,
) -> DatasetSummary:
    """Scan `path` as training would and summarise it; never raises for a bad folder or setting.

    `model_type` ("sd1", "sd2", "sd2-v", "sdxl") picks the bucket step and largest bucket as training does;
    when unknown (None) a training area of about 1024x1024 or more is taken to mean SDXL.
    Image sizes are read from the file headers only, so a damaged image body is found at training time.
    """
    start = time.perf_counter()
    summary = DatasetSummary(folder=_clean_path(path))
    try:
        if not summary.folder:
            summary.problems.append(EMPTY_PATH_PROBLEM)
            return summary
        manager = _bucket_manager(
            summary,
            resolution=resolution,
            enable_bucket=enable_bucket,
            min_size=min_bucket_reso,
            max_size=max_bucket_reso,
            step=bucket_reso_steps,
            no_upscale=bucket_no_upscale,
            model_type=model_type,
        )
        try:
            caption_extension = _spec_value(DatasetSpec, "dataset", "caption_extension", caption_extension)
            scan = scan_dataset(
                Path(summary.folder).expanduser().absolute(),  # absolute: the scan's messages name folders
                caption_extension=caption_extension,
                trigger_word=trigger_word or "",
                check_images=False,
            )
        except DatasetError as exc:
            summary.problems.append(_problem(exc))
            return summary
        except (OSError, ValueError) as exc:
            summary.problems.append(f"The folder {summary.folder} could not be read: {exc}")
            return summary
        _count(summary, scan, normalize_caption_extension(caption_extension))
        summary.warnings.extend(_sentence(w) for w in scan.warnings)
        if manager is not None:
            _place_in_buckets(summary, scan, manager)
        _check_trigger_word(summary, scan, (trigger_word or "").strip(), prepend_trigger_word)
        return summary
    finally:
        summary.ok = not summary.problems
        summary.elapsed_s = time.perf_counter() - start


# ---------------------------------------------------------------- settings


def _bucket_manager(
    summary: DatasetSummary,
    *,
    resolution: Any,
    enable_bucket: bool,
    min_size: Any,
    max_size: Any,
    step: Any,
    no_upscale: bool,
    model_type: str | None,
) -> BucketManager | None:
    """The same BucketManager the training job builds; a bad setting becomes a problem and None."""
    try:
        size = _spec_value(TrainingSpec, "training", "resolution", resolution)
        width, height = (size, size) if isinstance(size, int) else size
        min_size = _spec_value(DatasetSpec, "dataset", "min_bucket_reso", min_size)
        max_size = _spec_value(DatasetSpec, "dataset", "max_bucket_reso", max_size)
        step = _spec_value(DatasetSpec, "dataset", "bucket_reso_steps", step)
        if max_size is not None and min_size > max_size:
            raise DatasetError(
                f"is {min_size}, larger than dataset.max_bucket_reso ({max_size}); lower it or raise the maximum.",
                field="dataset.min_bucket_reso",
            )
        sdxl = _is_sdxl(model_type, width * height)
        arch_step = 32 if sdxl else 64
        step = step or arch_step
        max_size = max_size or (2048 if sdxl else 1024)
        if enable_bucket:
            validate_bucket_settings((width, height), min_size, max_size, step, arch_step)
            return BucketManager((width, height), min_size, max_size, step, bool(no_upscale))
        return BucketManager((width, height), min(width, height), max(width, height), step, False, fixed=True)
    except DatasetError as exc:
        summary.problems.append(_problem(exc))
        return None


def _spec_value(section: type, prefix: str, name: str, value: Any) -> Any:
    """Check one value with the job spec's own rule, so the summary refuses exactly what the spec refuses."""
    check = next(f for f in dataclasses.fields(section) if f.name == name).metadata["check"]
    if isinstance(value, list):
        value = tuple(value)
    try:
        return check(value)
    except Invalid as exc:
        raise DatasetError(str(exc), field=f"{prefix}.{name}") from None


def _is_sdxl(model_type: str | None, area: int) -> bool:
    if model_type:
        return model_type.strip().lower() == "sdxl"
    return area >= _SDXL_AREA


# ---------------------------------------------------------------- counting


def _count(summary: DatasetSummary, scan: DatasetScan, ext: str) -> None:
    summary.image_count = scan.num_images
    summary.train_images = scan.num_train_images
    summary.subsets = [(name, d["n_repeats"], d["img_count"]) for name, d in scan.dataset_dirs().items()]
    summary.captioned = sum(item.caption_source == "file" for item in scan.items)
    summary.caption_coverage = scan.caption_coverage()
    listings: dict[Path, set[str]] = {}
    for item in scan.items:
        if item.caption_source == "file":
            continue
        folder = item.path.parent
        if folder not in listings:
            listings[folder] = {name.lower() for name in _listdir(folder)}
        has_file = (item.path.stem + ext).lower() in listings[folder]
        target = summary.empty_captions if has_file else summary.missing_captions
        if len(target) < MAX_LISTED:
            target.append(_rel(scan, item))


def _place_in_buckets(summary: DatasetSummary, scan: DatasetScan, manager: BucketManager) -> None:
    """Bucket every image as training will; warn about images that get enlarged a lot."""
    counts: dict[tuple[int, int], int] = {}
    enlarged: list[ImageItem] = []
    blurry: list[tuple[ImageItem, tuple[int, int]]] = []
    for item in scan.items:
        try:
            choice = manager.select_bucket(item.width, item.height)
        except DatasetError as exc:
            summary.problems.append(f"{_rel(scan, item)}: {_problem(exc)}")
            summary.buckets = []
            return
        counts[choice.bucket] = counts.get(choice.bucket, 0) + 1
        scale = choice.resized[0] / item.width
        if choice.resized[0] > item.width or choice.resized[1] > item.height:
            enlarged.append(item)
        if scale >= _BLURRY_SCALE:
            blurry.append((item, choice.bucket))
    summary.buckets = sorted(((w, h, n) for (w, h), n in counts.items()), key=lambda b: (-b[2], b[0], b[1]))
    if blurry:
        shown = ", ".join(
            f"{_rel(scan, item)} ({item.width}×{item.height} → {w}×{h})" for item, (w, h) in blurry[:_SHOW]
        )
        summary.warnings.append(
            f"{len(blurry)} image(s) are less than half the size they are trained at and will look blurry: "
            f"{shown}{_more(len(blurry))}. Use larger versions of them, or remove them."
        )
    total = len(scan.items)
    if len(enlarged) > len(blurry) and len(enlarged) >= total * _MANY_ENLARGED:
        w, h = manager.max_reso
        summary.warnings.append(
            f"{len(enlarged)} of {total} images are smaller than the training size ({w}×{h}) and will be "
            "enlarged, which makes them softer. Larger images give sharper results; or turn on "
            "dataset.bucket_no_upscale so images are never enlarged."
        )


def _check_trigger_word(summary: DatasetSummary, scan: DatasetScan, trigger: str, prepend: bool) -> None:
    """Warn when the trigger word will be missing from what some images actually train with."""
    if not trigger or prepend:
        return
    pattern = re.compile(r"(?<!\w)" + re.escape(trigger.lower()) + r"(?!\w)")
    rng = random.Random(0)  # unused: no shuffling or dropout here, but build_caption needs one
    lacking = []
    for item in scan.items:
        caption = build_caption(
            item.caption,
            class_tokens=item.class_tokens,
            trigger_word=trigger,
            prepend_trigger=False,
            shuffle=False,
            keep_tokens=0,
            dropout_rate=0.0,
            rng=rng,
        )
        if not pattern.search(caption.lower()):
            lacking.append(_rel(scan, item))
    if lacking:
        summary.warnings.append(
            f"The trigger word '{trigger}' is not in the captions of {len(lacking)} of {len(scan.items)} "
            f"images: {', '.join(lacking[:_SHOW])}{_more(len(lacking))}. Add it to those captions, or turn on "
            "putting the trigger word first (dataset.prepend_trigger_word)."
        )


# ---------------------------------------------------------------- helpers


def _clean_path(path: Any) -> str:
    """As the job spec reads paths: spaces and the quotes of Windows' "Copy as path" removed."""
    text = str(path or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _problem(exc: DatasetError) -> str:
    """Folder problems read as sentences; setting problems keep the setting's name in front."""
    if exc.field and exc.field != "dataset.path":
        return str(exc)
    return _sentence(exc.message)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _rel(scan: DatasetScan, item: ImageItem) -> str:
    try:
        return item.path.relative_to(scan.root).as_posix()
    except ValueError:
        return item.path.name


def _more(count: int) -> str:
    return f" and {count - _SHOW} more" if count > _SHOW else ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# ---------------------------------------------------------------- HTML


def render_summary_html(summary: DatasetSummary) -> str:
    """Compact HTML for a gr.HTML box; every piece of user text is escaped."""
    esc = html.escape
    parts = [f'<div class="lora-trainer-dataset-summary" data-ok="{"true" if summary.ok else "false"}">']
    if summary.image_count:
        head = _plural(summary.image_count, "image")
        if summary.train_images != summary.image_count:
            head += f" ({summary.train_images} with repeats)"
        pieces = [head, f"{summary.captioned}/{summary.image_count} captioned"]
        if summary.buckets:
            pieces.append(_plural(len(summary.buckets), "bucket"))
        parts.append(f'<div class="lora-trainer-headline">{esc(" · ".join(pieces))}</div>')
        if len(summary.subsets) > 1 or any(repeats != 1 for _, repeats, _ in summary.subsets):
            folders = ", ".join(
                f"{name}: {_plural(count, 'image')} × {repeats}" for name, repeats, count in summary.subsets
            )
            parts.append(
                f'<div class="lora-trainer-subsets">Folders (images × repeats): {esc(folders)}</div>'
            )
        if summary.buckets:
            sizes = ", ".join(f"{w}×{h} ×{n}" for w, h, n in summary.buckets[:_SHOW_BUCKETS])
            if len(summary.buckets) > _SHOW_BUCKETS:
                sizes += f", and {len(summary.buckets) - _SHOW_BUCKETS} more"
            parts.append(f'<div class="lora-trainer-buckets">Training sizes: {esc(sizes)}</div>')
    for css, messages in (("problems", summary.problems), ("warnings", summary.warnings)):
        if messages:
            items = "".join(f"<li>{esc(m)}</li>" for m in messages)
            parts.append(f'<ul class="lora-trainer-{css}">{items}</ul>')
    parts.append("</div>")
    return "".join(parts)


def summarize_spec_dataset(spec: dict[str, Any], model_type: str | None = None) -> DatasetSummary:
    """The summary of a job spec's dataset, with the spec's caption, trigger and bucket settings."""
    data, training = spec.get("dataset") or {}, spec.get("training") or {}
    return summarize_dataset(
        str(data.get("path") or ""),
        caption_extension=data.get("caption_extension") or ".txt",
        trigger_word=str(data.get("trigger_word") or ""),
        prepend_trigger_word=bool(data.get("prepend_trigger_word")),
        resolution=training.get("resolution") or 512,
        enable_bucket=bool(data.get("enable_bucket", True)),
        min_bucket_reso=data.get("min_bucket_reso") or 256,
        max_bucket_reso=data.get("max_bucket_reso"),
        bucket_reso_steps=data.get("bucket_reso_steps"),
        bucket_no_upscale=bool(data.get("bucket_no_upscale")),
        model_type=model_type or (spec.get("model") or {}).get("model_type"),
    )
