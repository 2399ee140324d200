"""Unpack a dataset uploaded through the REST API (a zip, or base64 images with captions) into a new folder.

The bytes come from another machine, so nothing in them is trusted: every path is checked before anything
is written, sizes are counted while extracting (zip headers can lie), every image is opened with Pillow,
and the dataset appears under its final name only once all of it was written; a rejected upload leaves
nothing behind. Runs in the WebUI's process: standard library and Pillow only, no torch.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from ..data.scan import IMAGE_EXTENSIONS  # PIL + stdlib only, checked safe for the torch-free WebUI side

CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_DEPTH = 3  # folders above a file; kohya layouts need one ("10_mychar/img.png")
_CHUNK = 1024 * 1024
_RATIO_MIN_BYTES = 1024 * 1024  # smaller members cannot bomb anything; their bytes are still counted
_SHOW = 5  # offending names a message lists
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
_WINDOWS_BAD_CHARS = frozenset('<>:"|?*')
_DATASET_NAME = re.compile(r"[\w .\-]{1,80}")  # \w: letters and digits of any script, and "_"
_DATA_URL = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)
_ACCEPTED = (
    f"accepted types: {', '.join(sorted(IMAGE_EXTENSIONS))} (images) "
    f"and {', '.join(CAPTION_EXTENSIONS)} (captions)"
)


class UploadError(ValueError):
    """A rejected upload; the message names the file/field and what to do. `status` is the HTTP status
    the API should answer with: 400 (bad content/paths), 413 (too big / too many files)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 5000  # image + caption files together
    max_file_bytes: int = 64 * 1024**2
    max_total_bytes: int = 4 * 1024**3
    max_ratio: float = 100.0  # per zip member: uncompressed / compressed, guards zip bombs


@dataclass
class UploadSummary:
    path: Path  # the final dataset folder
    images: int
    captions: int
    bytes: int  # total bytes written
    skipped: list[str] = field(default_factory=list)  # junk entries ignored ("__MACOSX/...", ".DS_Store")


@dataclass(frozen=True)
class UploadItem:
    name: str  # file name, e.g. "img001.png" or "10_mychar/img001.png"
    data_base64: str  # the image bytes, base64 (a "data:image/png;base64," prefix is accepted)
    caption: str | None = None  # written as <stem>.txt next to the image when given


def safe_relative_path(name: str) -> PurePosixPath:
    """A client-sent file name as a relative path that cannot leave the dataset folder on any OS."""

    def bad(why: str) -> UploadError:
        return UploadError(
            f"File name {name!r} {why}; use a plain relative path like '10_mychar/img001.png'."
        )

    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise bad("contains control characters")
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        raise bad("is an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("is empty")
    if ".." in parts:
        raise bad("contains '..'")
    if len(parts) - 1 > MAX_DEPTH:
        raise bad(f"is nested more than {MAX_DEPTH} folders deep")
    for part in parts:
        if part[-1] in ". ":
            raise bad(f"has a part ending with a dot or space ({part!r})")
        if _WINDOWS_BAD_CHARS & set(part):
            raise bad('contains a character not allowed in Windows file names (<>:"|?*)')
        if part.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
            raise bad(f"uses a name reserved on Windows ({part!r})")
    return PurePosixPath(*parts)


def new_dataset_dir(root: Path, name: str) -> Path:
    """`root/name`, or `name_2`, `name_3`... when taken, so an upload never lands in an existing folder."""
    try:  # the file-name rules also refuse trailing dots/spaces and names reserved on Windows
        ok = _DATASET_NAME.fullmatch(name) and name[0] not in ". " and safe_relative_path(name).name == name
    except UploadError:
        ok = False
    if not ok:
        raise UploadError(
            f"Field 'name': {name!r} is not a usable dataset folder name; use 1-80 letters, digits, spaces, "
            "'_', '-' or '.', not starting with '.' (for example 'mychar_v2')."
        )
    candidate, n = root / name, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = root / f"{name}_{n}"
    return candidate


def unpack_zip(
    source: bytes | BinaryIO, root: Path, name: str, limits: UploadLimits = UploadLimits()
) -> UploadSummary:
    """Check every member of a zip (bytes or a seekable stream), then extract its images and captions."""
    root.mkdir(parents=True, exist_ok=True)
    new_dataset_dir(root, name)  # a bad name fails before any work
    try:
        archive = zipfile.ZipFile(BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UploadError(
            "The upload is not a zip file (or the zip is damaged); send a .zip archive."
        ) from exc
    with archive:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        skipped: list[str] = []
        bad_types: list[str] = []
        for info in archive.infolist():
            if info.is_dir() or _is_junk(info.filename):
                skipped.append(info.filename)
                continue
            rel = safe_relative_path(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"Zip member '{info.filename}' is a symbolic link; zip the real files.")
            if info.flag_bits & 0x1:
                raise UploadError(f"Zip member '{info.filename}' is encrypted; zip it without a password.")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_MIN_BYTES and ratio > limits.max_ratio:
                raise UploadError(f"'{info.filename}' looks like a zip bomb (compresses {ratio:.0f}:1).", 413)
            if _kind(rel) is None:
                bad_types.append(info.filename)
            plan.append((info, rel))
        _check_plan([(f"'{i.filename}'", rel, i.file_size) for i, rel in plan], bad_types, limits)

        def extract(tmp: Path) -> int:
            total = 0
            for info, rel in plan:
                dest = _target(tmp, rel)
                try:
                    total = _copy_counted(archive, info, dest, total, limits)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    raise UploadError(f"Zip member '{info.filename}' could not be read ({exc}).") from exc
                if _kind(rel) == "image":
                    _verify_image(dest, f"'{info.filename}'")
            return total

        return _build(root, name, [rel for _, rel in plan], extract, skipped)


def write_items(
    items: Sequence[UploadItem], root: Path, name: str, limits: UploadLimits = UploadLimits()
) -> UploadSummary:
    """Decode base64 images (and their captions), check them all, then write them as a new dataset."""
    root.mkdir(parents=True, exist_ok=True)
    new_dataset_dir(root, name)
    files: list[tuple[str, PurePosixPath, bytes]] = []  # (label for messages, path, content)
    for i, item in enumerate(items):
        label = f"items[{i}] ('{item.name}')"
        rel = safe_relative_path(item.name)
        if _kind(rel) != "image":
            raise UploadError(f"{label} is not an image name; {_ACCEPTED}.")
        files.append((label, rel, _decode_base64(item.data_base64, label)))
        if item.caption is not None:
            try:
                files.append((f"the caption of {label}", rel.with_suffix(".txt"), item.caption.encode()))
            except UnicodeEncodeError as exc:
                raise UploadError(f"The caption of {label} is not valid text ({exc}).") from exc
    _check_plan([(label, rel, len(data)) for label, rel, data in files], [], limits)

    def write(tmp: Path) -> int:
        for label, rel, data in files:
            if _kind(rel) == "image":
                _verify_image(BytesIO(data), label)
            _target(tmp, rel).write_bytes(data)
        return sum(len(data) for _, _, data in files)

    return _build(root, name, [rel for _, rel, _ in files], write, [])


def _is_junk(raw: str) -> bool:
    """OS/zip clutter: macOS resource forks (`__MACOSX/`, `._x`) and Finder/Explorer files."""
    parts = [p for p in raw.replace("\\", "/").split("/") if p]
    last = parts[-1].lower() if parts else ""  # an empty name is left to safe_relative_path to refuse
    return "__macosx" in (p.lower() for p in parts) or last in _JUNK_NAMES or last.startswith("._")


def _kind(rel: PurePosixPath) -> str | None:
    suffix = rel.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "caption" if suffix in CAPTION_EXTENSIONS else None


def _check_plan(
    files: list[tuple[str, PurePosixPath, int]], bad_types: list[str], limits: UploadLimits
) -> None:
    """Checks on the whole file list (label, path, size) before anything is written."""
    if bad_types:
        more = f" and {len(bad_types) - _SHOW} more" if len(bad_types) > _SHOW else ""
        shown = ", ".join(f"'{n}'" for n in bad_types[:_SHOW])
        raise UploadError(f"{len(bad_types)} file(s) are not images or captions: {shown}{more}; {_ACCEPTED}.")
    if len(files) > limits.max_files:
        raise UploadError(f"The upload has {len(files)} files; at most {limits.max_files} are allowed.", 413)
    for label, _, size in files:
        if size > limits.max_file_bytes:
            raise UploadError(f"{label} is {size} bytes; at most {limits.max_file_bytes} are allowed.", 413)
    if sum(size for _, _, size in files) > limits.max_total_bytes:
        raise UploadError(f"The upload unpacks to more than {limits.max_total_bytes} bytes.", 413)
    seen: dict[str, str] = {}
    folders = {str(parent).casefold() for _, path, _ in files for parent in path.parents}
    for label, path, _ in files:
        key = str(path).casefold()
        if key in seen:
            raise UploadError(
                f"{seen[key]} and {label} are the same file '{path}' (case is ignored); rename one."
            )
        if key in folders:
            raise UploadError(f"{label} is both a file and a folder in the upload; rename one.")
        seen[key] = label
    if not any(_kind(path) == "image" for _, path, _ in files):
        raise UploadError(f"The upload has no images; {_ACCEPTED}.")


def _target(tmp: Path, rel: PurePosixPath) -> Path:
    dest = tmp.joinpath(*rel.parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _copy_counted(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, total: int, limits: UploadLimits
) -> int:
    """Extract one member counting the real bytes, since the sizes in the headers are only claims."""
    written = 0
    with archive.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            total += len(chunk)
            if written > info.file_size or written > limits.max_file_bytes:
                raise UploadError(f"'{info.filename}' unpacks to more bytes than allowed or declared.", 413)
            if total > limits.max_total_bytes:
                raise UploadError(f"The zip unpacks to more than {limits.max_total_bytes} bytes.", 413)
            out.write(chunk)
    return total


def _decode_base64(text: str, label: str) -> bytes:
    text = "".join(_DATA_URL.sub("", text.strip(), count=1).split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UploadError(f"{label}: data_base64 is not valid base64 ({exc}).") from exc


def _verify_image(source: Path | BytesIO, label: str) -> None:
    """Open with Pillow, as training will: catches non-images renamed to .png and truncated files."""
    try:
        with Image.open(source) as image:
            image.verify()
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, OSError...)
        why = "unknown format" if isinstance(exc, UnidentifiedImageError) else exc  # its text has our path
        raise UploadError(
            f"{label} is not a readable image ({why}); send PNG, JPEG, WebP or BMP files."
        ) from exc


def _build(
    root: Path, name: str, plan: list[PurePosixPath], write: Callable[[Path], int], skipped: list[str]
) -> UploadSummary:
    """Write into a hidden temp folder, then rename it into place; on any failure remove it."""
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        written = write(tmp)
        final = new_dataset_dir(root, name)  # picked last, so a folder made meanwhile is not reused
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    images = sum(_kind(p) == "image" for p in plan)
    return UploadSummary(final, images, len(plan) - images, written, skipped)
