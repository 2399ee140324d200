"""Write files so that a crash, Ctrl-C or full disk never leaves a half-written file under the real name.

The WebUI scans the LoRA folder while we train; a truncated `.safetensors` there shows up as a broken card,
and Forge/reForge cache LoRAs by file name, so replacing a file in place serves stale weights. Every write
therefore goes to a hidden temp file in the same folder, is flushed to disk, then renamed into place, and
nothing is overwritten unless the caller says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

# Characters Windows forbids in file names; a name that works on Linux must still work for a Windows user.
_BAD_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_MAX_UNIQUE_TRIES = 10_000


def temp_path_for(path: Path) -> Path:
    """`.<name>.tmp-<pid>` beside the target: same file system (so the rename is atomic) and hidden."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _exists_message(path: Path) -> str:
    return (
        f"{path} already exists and will not be overwritten: the WebUI caches LoRAs by file name, so "
        "replacing a file would keep serving the old one. Choose another output name or delete the old file."
    )


def _friendly_os_error(exc: OSError, path: Path) -> OSError:
    reason = exc.strerror or str(exc)
    return OSError(
        exc.errno, f"could not write {path}: {reason} (check free disk space and folder permissions)"
    )


def _prepare_target(path: PathLike, overwrite: bool) -> Path:
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: a folder with that name already exists")
    if not overwrite and target.exists():
        raise FileExistsError(_exists_message(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _friendly_os_error(exc, target) from exc
    return target


def _fsync_file(path: Path) -> None:
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not possible (nor needed) on Windows, so best effort."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, target)
        return
    # A hard link fails if the name exists, closing the gap between our check and the rename.
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(_exists_message(target)) from None
    except (OSError, NotImplementedError):  # file systems without hard links (FAT, some network shares)
        if target.exists():
            raise FileExistsError(_exists_message(target)) from None
        os.replace(tmp, target)
        return
    with contextlib.suppress(OSError):
        tmp.unlink()


def write_atomically(path: PathLike, writer: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Run `writer(temp_path)`, then move the finished file to `path`; on any failure remove the temp file."""
    target = _prepare_target(path, overwrite)
    tmp = temp_path_for(target)
    try:
        writer(tmp)
        _fsync_file(tmp)
        _commit(tmp, target, overwrite)
    except FileExistsError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _friendly_os_error(exc, target) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(
    path: PathLike, data: bytes | bytearray | memoryview, *, overwrite: bool = True
) -> Path:
    """Write `data` to `path` atomically."""

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write_atomically(path, writer, overwrite=overwrite)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        key = bad[0]
        raise TypeError(
            f"safetensors metadata must map strings to strings; {key!r} has a value of type "
            f"{type(metadata[key]).__name__} (JSON-encode lists and dicts, str() numbers)"
        )
    return dict(metadata)


def atomic_save_safetensors(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """`safetensors.torch.save_file` through a temp file, so readers never see a partial model."""
    from safetensors.torch import save_file

    checked = _check_metadata(metadata)
    if not tensors:
        raise ValueError(f"refusing to write {path}: there are no tensors to save")
    return write_atomically(
        path, lambda tmp: save_file(dict(tensors), str(tmp), checked), overwrite=overwrite
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store a value of type {type(value).__name__} in JSON: {value!r}")


def atomic_write_json(path: PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """Pretty UTF-8 JSON, written atomically (paths and sets are converted, other objects are refused)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def check_file_stem(stem: str) -> str:
    """A clear error now beats a save that fails after hours of training."""
    if not isinstance(stem, str) or not stem.strip():
        raise ValueError("the output name is empty; give the LoRA a name")
    bad = sorted(set(_BAD_NAME_CHARS.findall(stem)))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise ValueError(f"the output name {stem!r} contains characters not allowed in file names: {shown}")
    if stem != stem.strip() or stem.endswith("."):
        raise ValueError(f"the output name {stem!r} must not start or end with spaces or end with a dot")
    return stem


def unique_path(directory: PathLike, stem: str, suffix: str) -> Path:
    """`directory/stem+suffix`, or `stem-2`, `stem-3`... : never the name of a file that already exists.

    Names are compared case-insensitively, so a copy of the folder on Windows or macOS cannot collide.
    """
    check_file_stem(stem)
    folder = Path(directory)
    if suffix and not suffix.startswith("."):
        suffix = "." + suffix
    taken = {p.name.lower() for p in folder.iterdir()} if folder.is_dir() else set()
    for n in range(1, _MAX_UNIQUE_TRIES + 1):
        name = f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}"
        candidate = folder / name
        if name.lower() not in taken and not candidate.exists():
            return candidate
    raise RuntimeError(
        f"could not find a free file name for {stem!r} in {folder} after {_MAX_UNIQUE_TRIES} tries"
    )
