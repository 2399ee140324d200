"""Which LoRA names are free in a WebUI's LoRA folder.

The WebUI names a LoRA by its file's basename, across every subfolder of its LoRA directory, and Forge and
reForge cache loaded LoRAs by that name. So a new LoRA must not reuse any basename already present anywhere
in the tree, nor the basename of an epoch file of an existing family (`NAME-000001`, `NAME-step00000120`).
Comparisons ignore case, because Windows and macOS file systems do. Torch-free: the WebUI side uses it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

LORA_FILE_EXTS = (".safetensors", ".pt", ".ckpt")
_FAMILY_SUFFIX = re.compile(r"-(?:\d{6}|step\d{8})$")


def family_of(stem: str) -> str:
    """The family a file stem belongs to: `mychar-000003` and `mychar-step00000120` belong to `mychar`."""
    return _FAMILY_SUFFIX.sub("", stem)


def lora_stems(root: Path) -> set[str]:
    """Lower-cased stems of every LoRA file under `root` (all subfolders, symlinks followed once)."""
    stems: set[str] = set()
    if not Path(root).is_dir():
        return stems
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in LORA_FILE_EXTS:
                stems.add(stem.lower())
    return stems


def name_taken(root: Path, name: str, stems: set[str] | None = None, reserved: Iterable[str] = ()) -> bool:
    """True when `name` (or an epoch file of it) already exists in the tree, its family folder exists, or
    another queued job has reserved it."""
    key = name.lower()
    stems = lora_stems(root) if stems is None else stems
    if key in stems or key in {family_of(s) for s in stems}:
        return True
    if key in {r.lower() for r in reserved}:
        return True
    return (Path(root) / name).exists()


def next_free_name(root: Path, name: str, reserved: Iterable[str] = ()) -> str:
    """`name` if it is free in `root`, else the first free `name_2`, `name_3`, ..."""
    stems = lora_stems(root)
    reserved = list(reserved)
    candidate, n = name, 1
    while name_taken(root, candidate, stems, reserved):
        n += 1
        candidate = f"{name}_{n}"
    return candidate
