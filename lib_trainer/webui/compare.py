"""The "Compare epochs" grid of a finished job: what to generate, and where the result is kept (host-free).

The grid itself is made by the WebUI's own txt2img with its X/Y/Z plot script and our two axes (epoch files
on one axis, strengths on the other, one fixed seed), so what the user compares is exactly what they will
get when they generate with the LoRA. This module turns a job (its spec and its files) into that request,
checks what the user edited, and stores the grids in the job's folder with their infotext.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..export.lora_names import family_of
from ..jobs.store import atomic_write_bytes, atomic_write_json
from .lora_tags import FINAL, expand_num_values, families_with_epochs, num_label, tag_names
from .xyz_axes import NUM_LABEL, STRENGTH_LABEL, AxisError

DEFAULT_STRENGTHS = "0.4, 0.6, 0.8, 1"
MAX_DEFAULT_EPOCHS = 8  # more columns than this make cells too small to judge; the user can type more
MAX_CELLS = 100
COMPARE_DIR = "compare"
SETTINGS_FILE = "webui.json"  # per-job choices of the WebUI side (e.g. compare when done)
# The trainer's sample samplers and the names the WebUI's sampler list uses for them.
HOST_SAMPLERS = {"euler_a": "Euler a", "euler": "Euler", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M"}
_GRID_NAME = re.compile(r"^grid-(\d{8}-\d{6})(?:-(\d+))?\.png$")
_STRENGTH = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")
_STRENGTH_RANGE = re.compile(
    r"^\s*-?\d+(\.\d*)?\s*-\s*-?\d+(\.\d*)?\s*(\(\s*[+-]?\d+(\.\d*)?\s*\)|\[\s*\d+\s*\])?\s*$"
)


@dataclass
class CompareRequest:
    """One epoch x strength grid. `epochs` and `strengths` are value texts as the X/Y/Z plot takes them."""

    family: str
    prompt: str
    negative_prompt: str = ""
    epochs: str = ""  # "" = no epoch axis (a job that saved only the final file)
    strengths: str = DEFAULT_STRENGTHS
    seed: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"

    def axes(self) -> list[tuple[str, str]]:
        """(axis label, values) for the X/Y/Z plot: epochs across, strengths down."""
        out = []
        if self.epochs.strip():
            out.append((NUM_LABEL, self.epochs))
        out.append((STRENGTH_LABEL, self.strengths))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GridResult:
    """What the host returns: the grid as PNG bytes and its infotext (the text PNG Info shows)."""

    png: bytes
    infotext: str
    notes: list[str] = field(default_factory=list)


def saved_epochs(family: str, files: list[str]) -> tuple[list[int], bool]:
    """Epoch numbers with a file of this family among the job's files, and whether the final file exists."""
    stems = [Path(f).stem for f in files if str(f).endswith(".safetensors")]
    epochs = families_with_epochs(stems).get(family, [])
    return epochs, family in stems


def default_epochs_text(epochs: list[int], final: bool, limit: int = MAX_DEFAULT_EPOCHS) -> str:
    """All saved epochs and `final`, thinned evenly (always keeping the last) when there are too many."""
    values: list[str] = [str(e) for e in epochs] + ([FINAL] if final else [])
    if len(values) > limit:
        step = (len(values) - 1) / (limit - 1)
        values = [values[round(i * step)] for i in range(limit)]
    return ", ".join(values)


def _with_tag(prompt: str, family: str) -> str:
    """The prompt, with `<lora:FAMILY:1>` appended unless it already has a tag of this family."""
    if any(family_of(name) == family for name in tag_names(prompt)):
        return prompt
    tag = f"<lora:{family}:1>"
    return f"{prompt.rstrip()} {tag}".strip() if prompt.strip() else tag


def default_request(spec: dict[str, Any], family: str, files: list[str]) -> CompareRequest:
    """The grid for a job as it finished: its first sample prompt (or its trigger word), its saved epochs,
    the sample's seed, steps, CFG and size (or the training resolution)."""
    samples = spec.get("samples") or {}
    prompts = samples.get("prompts") or []
    first = prompts[0] if prompts else {}
    trigger = str((spec.get("dataset") or {}).get("trigger_word") or "").strip()
    prompt = str(first.get("prompt") or trigger)
    resolution = (spec.get("training") or {}).get("resolution") or 512
    width, height = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    epochs, final = saved_epochs(family, files)
    return CompareRequest(
        family=family,
        prompt=_with_tag(prompt, family),
        negative_prompt=str(first.get("negative_prompt") or ""),
        epochs=default_epochs_text(epochs, final) if epochs else "",
        seed=int(first.get("seed") or 1),
        steps=int(first.get("steps") or 20),
        cfg_scale=float(first.get("cfg_scale") or 7.0),
        width=int(first.get("width") or width),
        height=int(first.get("height") or height),
        sampler=HOST_SAMPLERS.get(str(samples.get("sampler") or ""), "Euler a"),
    )


def _count_strengths(text: str) -> int:
    parts = [p for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise AxisError('Strengths: give weights, e.g. "0.4, 0.6, 0.8, 1".')
    count = 0
    for part in parts:
        if _STRENGTH.match(part):
            count += 1
        elif _STRENGTH_RANGE.match(part):
            count += 5  # an estimate: the host expands ranges itself
        else:
            raise AxisError(f'Strengths: "{part.strip()}" is not a number or a range like 0-1 (+0.25).')
    return count


def checked(request: CompareRequest) -> CompareRequest:
    """The request with its texts tidied, or an AxisError naming the field to fix."""
    prompt = _with_tag(request.prompt or "", request.family)
    epochs = request.epochs.strip()
    columns = len(expand_num_values(epochs)) if epochs else 1
    rows = _count_strengths(request.strengths)
    if columns * rows > MAX_CELLS:
        raise AxisError(
            f"That grid has {columns * rows} images; keep it under {MAX_CELLS} (fewer epochs or strengths)."
        )
    for name, value, lo, hi in (("Steps", request.steps, 1, 150), ("CFG scale", request.cfg_scale, 1, 30)):
        if not lo <= float(value) <= hi:
            raise AxisError(f"{name} must be between {lo} and {hi}.")
    for name, value in (("Width", request.width), ("Height", request.height)):
        if not 64 <= int(value) <= 2048 or int(value) % 8:
            raise AxisError(f"{name} must be a multiple of 8 between 64 and 2048.")
    return replace(request, prompt=prompt, epochs=epochs, seed=int(request.seed) % 2**32)


def describe(request: CompareRequest) -> str:
    """One line for the user: what the grid shows."""
    if request.epochs:
        epochs = ", ".join(num_label(v) for v in expand_num_values(request.epochs))
        return f"{request.family}: {epochs} x strengths {request.strengths} (seed {request.seed})"
    return f"{request.family}: strengths {request.strengths} (seed {request.seed})"


# ------------------------------------------------------------ storage in the job folder


def compare_dir(job_dir: str | Path) -> Path:
    return Path(job_dir) / COMPARE_DIR


def save_grid(job_dir: str | Path, request: CompareRequest, result: GridResult) -> Path:
    """Keep a grid with its request next to the job: `compare/grid-<time>.png` (+ .json)."""
    folder = compare_dir(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"grid-{stamp}.png"
    n = 2
    while path.exists():
        path = folder / f"grid-{stamp}-{n}.png"
        n += 1
    atomic_write_bytes(path, result.png)
    atomic_write_json(path.with_suffix(".json"), {"request": request.to_dict(), "infotext": result.infotext})
    return path


def _grid_order(path: Path) -> tuple[str, int]:
    match = _GRID_NAME.match(path.name)
    return (match[1], int(match[2] or 1)) if match else ("", 0)


def latest_grid(job_dir: str | Path) -> tuple[Path, str] | None:
    """The newest grid of a job and its infotext, if any."""
    grids = sorted(compare_dir(job_dir).glob("grid-*.png"), key=_grid_order)
    if not grids:
        return None
    path = grids[-1]
    try:
        infotext = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")).get("infotext", "")
    except (OSError, ValueError):
        infotext = ""
    return path, str(infotext)


def read_settings(job_dir: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(job_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_settings(job_dir: str | Path, **values: Any) -> None:
    atomic_write_json(Path(job_dir) / SETTINGS_FILE, {**read_settings(job_dir), **values})
