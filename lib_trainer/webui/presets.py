"""Training presets: named job-spec fragments (hardware-sized settings) that fill in the Train LoRA tab.

A preset never carries what belongs to one run (LoRA name, dataset, trigger word, model, output folder),
so applying one keeps the user's own choices. Built-ins ship as JSON in lib_trainer/resources/presets;
user presets are JSON files in a folder of the WebUI. Runs in the WebUI's process: no torch here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import default_spec_dict, spec_from_dict, spec_to_dict

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "resources" / "presets"
# Built-ins are listed in this order (file names without .json); any other built-in file follows.
BUILTIN_ORDER = (
    "sd15-6gb",
    "sd15-8gb",
    "sd15-12gb",
    "sdxl-12gb",
    "sdxl-16gb",
    "sdxl-24gb",
    "sd15-dreambooth-24gb",
)
# Per-run fields: (section or None for top level, field). A preset never sets or changes them.
PER_RUN_FIELDS: tuple[tuple[str | None, str], ...] = (
    (None, "name"),
    ("dataset", "path"),
    ("dataset", "trigger_word"),
    ("model", "checkpoint"),
    ("model", "vae"),
    ("output", "dir"),
    ("finetune", "lora_dir"),
)
# Stand-ins for the per-run fields when a fragment is checked on its own.
_PLACEHOLDERS = {
    "name": "preset-check",
    "model": {"checkpoint": "preset-check.safetensors"},
    "dataset": {"path": "preset-check", "trigger_word": "preset"},
    "output": {"dir": "preset-check"},
    # a DreamBooth preset may leave the class to the user; the job's own check asks for it then
    "dreambooth": {"class_prompt": "preset check"},
    "finetune": {"lora_dir": "preset-check"},
}
MAX_TITLE = 80
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}


@dataclass
class Preset:
    title: str
    description: str
    spec: dict[str, Any]  # a job-spec fragment
    builtin: bool = False
    path: str | None = None


def default_builtin(presets: Sequence[Preset], sdxl: bool) -> Preset | None:
    """The preset a fresh tab starts from: the first built-in for the loaded model's family (SDXL, or SD1.5
    and the rest), else the first built-in. The quality tests train with this preset too (docs/quality.md)."""
    builtins = [p for p in presets if p.builtin]
    for preset in builtins:
        if ("sdxl" in preset.title.lower()) == sdxl:
            return preset
    return builtins[0] if builtins else None


# ---------------------------------------------------------------- fragments


def fragment_from_spec(spec_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a (full or partial) spec without spec_version and the per-run fields; `mode` stays."""
    out = copy.deepcopy(dict(spec_dict))
    out.pop("spec_version", None)
    for section, name in PER_RUN_FIELDS:
        if section is None:
            out.pop(name, None)
        elif isinstance(out.get(section), dict):
            out[section].pop(name, None)
            if not out[section]:
                del out[section]
    return out


def apply_preset(spec_dict: Mapping[str, Any], preset: Preset | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `spec_dict` with the preset's settings merged in, section by section.

    Within a section the preset's values replace the spec's (a list or a table value such as
    training.optimizer_args is replaced whole, so the preset's optimizer settings are exactly its own).
    The per-run fields of `spec_dict` are never touched, even by a hand-edited preset that sets them.
    """
    fragment = fragment_from_spec(preset.spec if isinstance(preset, Preset) else preset)
    return _merge(copy.deepcopy(dict(spec_dict)), fragment)


def _merge(base: dict[str, Any], extra: Mapping[str, Any], *, top: bool = True) -> dict[str, Any]:
    """Merge `extra` into `base` in place: sections (top-level tables) key by key, everything else replaced."""
    for key, value in extra.items():
        if top and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, top=False)
        else:
            base[key] = copy.deepcopy(value)
    return base


def check_fragment(fragment: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a fragment on a complete spec; returns it with values in the spec's own spelling.

    Raises SpecError (every problem, with its field path) when a value would not be accepted by a job.
    """
    full = _merge(default_spec_dict(), _PLACEHOLDERS)
    checked = spec_to_dict(spec_from_dict(_merge(full, fragment)))
    return _same_keys(fragment, checked)


def _same_keys(
    fragment: Mapping[str, Any], checked: Mapping[str, Any], *, top: bool = True
) -> dict[str, Any]:
    """The validated values for exactly the keys the fragment has (e.g. "adamw8bit" -> "AdamW8bit")."""
    out: dict[str, Any] = {}
    for key, value in fragment.items():
        if top and isinstance(value, Mapping) and isinstance(checked.get(key), Mapping):
            out[key] = _same_keys(value, checked[key], top=False)
        else:
            out[key] = checked.get(key, value)
    return out


# ---------------------------------------------------------------- the store


class PresetStore:
    """Built-in presets plus the user's own, saved as one JSON file each in `user_dir`.

    `problems` lists the files the last `list()` skipped (broken JSON, invalid settings, clashing titles),
    naming each file and what is wrong, so the UI can show them instead of failing.
    """

    def __init__(self, user_dir: str | os.PathLike[str], builtin_dir: str | os.PathLike[str] | None = None):
        self.user_dir = Path(user_dir)
        self.builtin_dir = Path(builtin_dir) if builtin_dir is not None else BUILTIN_DIR
        self.problems: list[str] = []

    def list(self) -> list[Preset]:
        """Built-ins first (fixed order), then user presets sorted by title; broken files are skipped."""
        self.problems = []
        builtins = self._read_dir(self.builtin_dir, builtin=True)
        rank = {stem: i for i, stem in enumerate(BUILTIN_ORDER)}
        builtins.sort(key=lambda p: (rank.get(Path(p.path or "").stem, len(rank)), p.title.casefold()))
        taken = {p.title.casefold() for p in builtins}
        users = []
        for preset in self._read_dir(self.user_dir, builtin=False):
            if preset.title.casefold() in taken:
                self.problems.append(
                    f"Skipped preset file {preset.path}: its title '{preset.title}' is already used by another "
                    "preset; change the title in the file."
                )
                continue
            taken.add(preset.title.casefold())
            users.append(preset)
        users.sort(key=lambda p: p.title.casefold())
        return builtins + users

    def get(self, title: str) -> Preset:
        """The preset with this title (exact, else ignoring case); KeyError naming the available ones."""
        presets = self.list()
        for preset in presets:
            if preset.title == title:
                return preset
        for preset in presets:
            if preset.title.casefold() == str(title).strip().casefold():
                return preset
        names = ", ".join(f"'{p.title}'" for p in presets) or "none"
        raise KeyError(f"there is no preset called '{title}'; the presets are: {names}")

    def save(self, title: str, spec: Mapping[str, Any], description: str = "") -> Preset:
        """Save the settings of `spec` (a full spec or a fragment) as a user preset; replaces one of the same title.

        Per-run fields are left out. Raises SpecError for settings a job would refuse, and ValueError for an
        unusable title or the title of a built-in preset.
        """
        title = _check_title(title)
        existing = None
        for preset in self.list():
            if preset.title.casefold() == title.casefold():
                if preset.builtin:
                    raise ValueError(
                        f"'{preset.title}' is a built-in preset and cannot be replaced; pick another name "
                        "for your preset."
                    )
                existing = preset
        fragment = check_fragment(fragment_from_spec(spec))
        target = Path(existing.path) if existing and existing.path else self._free_path(title)
        content = {"title": title, "description": str(description or "").strip(), "spec": fragment}
        self.user_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        return Preset(title, content["description"], fragment, builtin=False, path=str(target))

    def delete(self, title: str) -> None:
        """Remove a user preset; ValueError for a built-in one, KeyError if there is no such preset."""
        preset = self.get(title)
        if preset.builtin:
            raise ValueError(f"'{preset.title}' is a built-in preset and cannot be deleted.")
        if preset.path:
            Path(preset.path).unlink(missing_ok=True)

    # ------------------------------------------------------------ files

    def _read_dir(self, folder: Path, *, builtin: bool) -> list[Preset]:
        try:
            files = sorted(p for p in folder.glob("*.json") if p.is_file())
        except OSError as exc:
            self.problems.append(f"Could not read the preset folder {folder}: {exc}")
            return []
        out = []
        for file in files:
            try:
                out.append(_read_preset(file, builtin=builtin))
            except ValueError as exc:  # SpecError is a ValueError too
                detail = str(exc).replace("\n", "; ")
                self.problems.append(f"Skipped preset file {file}: {detail}")
        return out

    def _free_path(self, title: str) -> Path:
        slug = slugify(title)
        target = self.user_dir / f"{slug}.json"
        n = 2
        while target.exists():
            target = self.user_dir / f"{slug}-{n}.json"
            n += 1
        return target


def _read_preset(file: Path, *, builtin: bool) -> Preset:
    """One preset file, checked; ValueError saying what is wrong with it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text; save it with UTF-8 encoding") from None
    except OSError as exc:
        raise ValueError(f"could not be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ValueError('expected an object like {"title": ..., "description": ..., "spec": {...}}')
    unknown = sorted(set(data) - {"title", "description", "spec"})
    if unknown:
        raise ValueError(
            f"unknown entries {', '.join(unknown)}; only title, description and spec are allowed"
        )
    title = _check_title(data.get("title"))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError("description must be text")
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise ValueError('"spec" must be an object with job settings, e.g. {"training": {"epochs": 10}}')
    return Preset(title, description, check_fragment(fragment_from_spec(spec)), builtin, str(file))


def _check_title(title: Any) -> str:
    if not isinstance(title, str) or not title.strip():
        raise ValueError("the preset needs a title; type a name for it")
    title = " ".join(title.split())
    if len(title) > MAX_TITLE:
        raise ValueError(f"the preset title is {len(title)} characters long; use at most {MAX_TITLE}")
    return title


def slugify(title: str) -> str:
    """A file name every OS accepts: letters and digits (any language) joined by '-', lower case."""
    slug = re.sub(r"[\W_]+", "-", title.casefold()).strip("-")[:60].strip("-") or "preset"
    if slug.upper() in _WINDOWS_RESERVED:
        slug += "-preset"
    return slug


def _write_atomic(target: Path, text: str) -> None:
    """Write to a temporary file beside the target, then rename, so a crash never leaves half a preset."""
    fd, temp = tempfile.mkstemp(prefix=".preset-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
