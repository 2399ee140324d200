"""Find the training images and captions in a dataset folder, before any model is loaded.

Everything that can be wrong with a hobbyist's folder (wrong layout, broken image, caption saved in the
wrong encoding) is found here, up front, with a message naming the file, so a run never dies an hour in.
Layout follows kohya: `<repeats>_<class tokens>` subfolders, or images straight in the folder.
"""

from __future__ import annotations

import re
import warnings as _warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
# Formats people often drop in by mistake: named in the warning so they know to convert them.
OTHER_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".avif", ".heic", ".jxl", ".jfif", ".svg"})
# OS/zip clutter, ignored without a warning.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
SMALL_IMAGE_PX = 64
_SUBSET_NAME = re.compile(r"^(\d+)_(.*)$", re.DOTALL)
_EXIF_ORIENTATION = 0x0112
_SHOW = 5  # how many file names a warning lists before "and N more"


@dataclass(frozen=True)
class ImageItem:
    """One training image; repeats and class tokens come from the folder it is in."""

    path: Path
    caption: str | None
    caption_source: str  # "file" | "missing"
    repeats: int
    class_tokens: str
    subset: str
    width: int
    height: int


@dataclass
class DatasetScan:
    """What `scan_dataset` found; the numbers kohya records in LoRA metadata are derived from it."""

    root: Path
    items: list[ImageItem]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_train_images(self) -> int:
        """Images per epoch counting repeats (kohya's `ss_num_train_images`)."""
        return sum(item.repeats for item in self.items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_tag_frequency`: per subset folder, how often each comma-separated tag occurs.

        Images without a caption count with the text they train with (class tokens), as kohya does.
        """
        result: dict[str, dict[str, int]] = {}
        for item in self.items:
            counts = result.setdefault(item.subset, {})
            text = item.caption if item.caption is not None else item.class_tokens
            for tag in text.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return result

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_dataset_dirs`: `{folder: {"n_repeats": r, "img_count": n}}`."""
        dirs: dict[str, dict[str, int]] = {}
        for item in self.items:
            entry = dirs.setdefault(item.subset, {"n_repeats": item.repeats, "img_count": 0})
            entry["img_count"] += 1
        return dirs

    def caption_coverage(self) -> float:
        """Fraction of images that have their own caption file (0.0 to 1.0)."""
        if not self.items:
            return 0.0
        return sum(item.caption_source == "file" for item in self.items) / len(self.items)


@dataclass
class _Findings:
    """Things worth one summarised warning each, collected across all folders."""

    other_files: list[Path] = field(default_factory=list)
    orphan_captions: list[Path] = field(default_factory=list)
    missing_caption: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    empty_caption: list[Path] = field(default_factory=list)
    small: list[tuple[Path, int, int]] = field(default_factory=list)
    nested_dirs: list[Path] = field(default_factory=list)


def scan_dataset(
    path: str | Path,
    *,
    caption_extension: str = ".txt",
    trigger_word: str = "",
    check_images: bool = True,
) -> DatasetScan:
    """Scan `path` (kohya `N_name` subfolders and/or images directly inside) into a `DatasetScan`.

    With `check_images`, every image is fully decoded once so a corrupt file is reported now, by name.
    Raises `DatasetError` for anything that would stop training; everything else becomes a warning.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(
            f"dataset folder not found: {root}. Check the path and try again.", field="dataset.path"
        )
    if not root.is_dir():
        raise DatasetError(
            f"{root} is a file, not a folder. Point it at the folder that holds your images.",
            field="dataset.path",
        )
    ext = normalize_caption_extension(caption_extension)
    trigger_word = trigger_word.strip()
    warnings: list[str] = []
    found = _Findings()

    subset_dirs: list[tuple[Path, int, str]] = []
    ignored_dirs: list[Path] = []
    root_files: list[Path] = []
    for entry in _list_dir(root):
        if _skipped_silently(entry.name):
            continue
        if entry.is_dir():
            parsed = _parse_subset_name(entry.name)
            if parsed is None:
                ignored_dirs.append(entry)
            elif parsed[0] == 0:
                warnings.append(
                    f"folder '{entry.name}' is ignored: its repeat count is 0. Rename it like "
                    f"'1_{parsed[1]}' (or a higher number) to train on it."
                )
            else:
                subset_dirs.append((entry, parsed[0], parsed[1]))
        elif entry.is_file():
            root_files.append(entry)

    items: list[ImageItem] = []
    root_items = _scan_folder(root, root_files, 1, trigger_word, root.name, ext, check_images, found)
    if root_items:
        items.extend(root_items)
        if subset_dirs:
            warnings.append(
                f"{len(root_items)} image(s) directly in '{root.name}' are used with 1 repeat, alongside the "
                f"{len(subset_dirs)} numbered subfolder(s). Move them into a subfolder like '1_{root.name}' "
                "if that is not what you want."
            )
        elif (named := _parse_subset_name(root.name)) is not None:
            repeats, tokens = named
            warnings.append(
                f"the dataset folder '{root.name}' is named like a kohya subfolder, but the dataset path should be "
                f"its parent: its images are used with 1 repeat, not {repeats}, and class tokens '{tokens}' are not "
                "applied. Select the parent folder to use the name."
            )
    for folder, repeats, tokens in subset_dirs:
        files = [e for e in _list_dir(folder) if not _skipped_silently(e.name)]
        found.nested_dirs.extend(e for e in files if e.is_dir())
        subset_items = _scan_folder(
            folder, [e for e in files if e.is_file()], repeats, tokens, folder.name, ext, check_images, found
        )
        if not subset_items:
            warnings.append(f"folder '{folder.name}' has no images ({_ext_list()}); it is ignored.")
        items.extend(subset_items)

    for folder in ignored_dirs:
        warnings.append(
            f"folder '{folder.name}' is ignored: its name does not start with a repeat count. Name it like "
            f"'10_{folder.name}' to use it (10 = times each image is seen per epoch)."
        )
    warnings.extend(_summarise(found, ext, trigger_word))
    if not items:
        raise DatasetError(_empty_message(root, ignored_dirs, found), field="dataset.path")
    return DatasetScan(root=root, items=items, warnings=warnings)


def normalize_caption_extension(value: str) -> str:
    """'txt' -> '.txt'; refuses values that cannot name a caption file."""
    ext = (value or "").strip()
    if ext and not ext.startswith("."):
        ext = "." + ext
    if len(ext) < 2 or "/" in ext or "\\" in ext:
        raise DatasetError(
            f"'{value}' is not a usable caption file extension; use '.txt' (or '.caption' for kohya datasets).",
            field="dataset.caption_extension",
        )
    if ext.lower() in IMAGE_EXTENSIONS:
        raise DatasetError(
            f"'{value}' is an image extension, not a caption extension; use '.txt' or '.caption'.",
            field="dataset.caption_extension",
        )
    return ext


def read_caption(path: Path) -> str:
    """The caption text: UTF-8 (BOM allowed), lines stripped and joined with ', ', blank lines dropped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"caption file {path} could not be read ({exc}); check its permissions.") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"caption file {path} is not UTF-8 text (bad byte at position {exc.start}). Open it in a text "
            "editor and save it with UTF-8 encoding."
        ) from exc
    lines = (line.strip().strip(",").strip() for line in text.splitlines())
    return ", ".join(line for line in lines if line)


def read_image_size(path: Path, *, full_decode: bool = True) -> tuple[int, int]:
    """(width, height) as the image will be used, i.e. after its EXIF rotation; DatasetError if unreadable."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if full_decode:
                    img.load()
                width, height = img.size
                orientation = _orientation(img, full_decode)
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{path} is too large to load safely ({exc}). Downscale it (e.g. to 4096 px on the long side)."
        ) from exc
    except Exception as exc:  # PIL raises many types for broken files; all mean the same to the user
        raise DatasetError(
            f"{path} could not be read as an image: {exc}. Remove it or re-save it as PNG/JPEG in an image editor."
        ) from exc
    if width < 1 or height < 1:
        raise DatasetError(f"{path} has no pixels ({width}x{height}); remove it.")
    if orientation in (5, 6, 7, 8):  # rotated 90/270 degrees: exif_transpose swaps the sides
        width, height = height, width
    return width, height


def _orientation(img: Image.Image, decoded: bool) -> int:
    """The EXIF orientation. Pillow's PNG getexif() decodes the whole image to look for a late eXIf chunk,
    which makes a header-only size check of a big PNG folder take seconds; without a full decode, read only
    the EXIF block found in the header (where cameras and editors put it)."""
    if decoded or img.format != "PNG":
        return img.getexif().get(_EXIF_ORIENTATION, 1)
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(_EXIF_ORIENTATION, 1)


def _scan_folder(
    folder: Path,
    files: list[Path],
    repeats: int,
    class_tokens: str,
    subset: str,
    ext: str,
    check_images: bool,
    found: _Findings,
) -> list[ImageItem]:
    """Images in one folder (non-recursive) with their captions; odd files go into `found`."""
    ext_lower = ext.lower()
    captions = {f.name.lower(): f for f in files if f.name.lower().endswith(ext_lower)}
    used: set[str] = set()
    items = []
    for file in files:
        suffix = file.suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            if not file.name.lower().endswith(ext_lower):
                found.other_files.append(file)
            continue
        width, height = read_image_size(file, full_decode=check_images)
        if min(width, height) < SMALL_IMAGE_PX:
            found.small.append((file, width, height))
        caption_name = (file.stem + ext).lower()
        caption, source = None, "missing"
        caption_file = captions.get(caption_name)
        if caption_file is not None:
            used.add(caption_name)
            text = read_caption(caption_file)
            if text:
                caption, source = text, "file"
            else:
                found.empty_caption.append(caption_file)
        if caption is None:
            found.missing_caption[class_tokens].append(file)
        items.append(ImageItem(file, caption, source, repeats, class_tokens, subset, width, height))
    found.orphan_captions.extend(f for name, f in sorted(captions.items()) if name not in used)
    return items


def _summarise(found: _Findings, ext: str, trigger_word: str) -> list[str]:
    """One warning per kind of finding, listing a few names, so big datasets don't flood the log."""
    out = []
    for tokens, files in found.missing_caption.items():
        if tokens:
            fallback = f"train with the caption '{tokens}' (folder class tokens / trigger word)"
        else:
            fallback = (
                "have no folder class tokens or trigger word either, so they train with an EMPTY caption; "
                "add caption files or set dataset.trigger_word"
            )
        out.append(
            f"{len(files)} image(s) have no caption file (<image name>{ext}) and {fallback}: {_names(files)}"
        )
    if found.empty_caption:
        out.append(
            f"{len(found.empty_caption)} caption file(s) are empty and are treated as missing: "
            f"{_names(found.empty_caption)}"
        )
    if found.orphan_captions:
        out.append(
            f"{len(found.orphan_captions)} caption file(s) have no image with the same name and are unused: "
            f"{_names(found.orphan_captions)}"
        )
    if found.other_files:
        out.append(_other_files_warning(found.other_files, ext))
    if found.nested_dirs:
        out.append(
            "folders inside a numbered subfolder are not scanned (only images directly inside it are used): "
            f"{_names(found.nested_dirs)}"
        )
    if found.small:
        sizes = ", ".join(f"{p.parent.name}/{p.name} ({w}x{h})" for p, w, h in found.small[:_SHOW])
        more = f" and {len(found.small) - _SHOW} more" if len(found.small) > _SHOW else ""
        out.append(
            f"{len(found.small)} image(s) are smaller than {SMALL_IMAGE_PX} px on a side and will be blurry when "
            f"scaled up: {sizes}{more}"
        )
    return out


def _other_files_warning(files: list[Path], ext: str) -> str:
    message = f"skipped {len(files)} file(s) that are neither images ({_ext_list()}) nor captions (*{ext}): {_names(files)}"
    if any(f.suffix.lower() in OTHER_IMAGE_EXTENSIONS for f in files):
        message += ". Convert other image formats to PNG or JPEG to use them"
    caption_like = sorted({f.suffix.lower() for f in files if f.suffix.lower() in (".txt", ".caption")})
    if caption_like:
        message += (
            f". Your captions may be the {'/'.join(caption_like)} files: set dataset.caption_extension to "
            f"'{caption_like[0]}' (it is '{ext}')"
        )
    return message


def _empty_message(root: Path, ignored_dirs: list[Path], found: _Findings) -> str:
    message = (
        f"no training images found in {root}. Put images ({_ext_list()}) directly in that folder, or in "
        "subfolders named like '10_mychar' (10 = repeats, 'mychar' = class tokens)."
    )
    with_images = [d for d in ignored_dirs if any(_is_image(e) for e in _list_dir(d))]
    if with_images:
        message += " These subfolders have images but no repeat count in their name: " + ", ".join(
            f"'{d.name}' (rename to '10_{d.name}')" for d in with_images[:_SHOW]
        )
    elif found.other_files:
        message += f" Files found but not used: {_names(found.other_files)}"
    return message


def _list_dir(folder: Path) -> list[Path]:
    """Sorted entries, so item order (and so seeded training) does not depend on the file system."""
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(
            f"could not list folder {folder}: {exc}. Check that it exists and is readable."
        ) from exc


def _parse_subset_name(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); kohya keeps underscores after the first one."""
    match = _SUBSET_NAME.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def _skipped_silently(name: str) -> bool:
    """Hidden entries (our cache folder, .ipynb_checkpoints, macOS '._' files) and OS clutter."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _ext_list() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))


def _names(paths: list[Path]) -> str:
    shown = ", ".join(f"{p.parent.name}/{p.name}" for p in paths[:_SHOW])
    return shown + (f" and {len(paths) - _SHOW} more" if len(paths) > _SHOW else "")
