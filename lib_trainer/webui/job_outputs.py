"""What a job's files are, seen from the WebUI, and which names a new checkpoint may take (host-free).

A LoRA job writes LoRAs (for the WebUI's Lora list). A full fine-tune (mode "dreambooth") writes checkpoints
straight into the WebUI's checkpoint folder (its `output.dir`) and, when asked, one extracted LoRA into the
LoRA folder. The tab, the API and the list refreshes need to tell them apart, so that a 2 GB model file is
never called a LoRA and the right WebUI list is rescanned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..export.lora_names import lora_stems, name_taken
from ..spec.schema import FULL_FINETUNE

LORA = "lora"
CHECKPOINT = "checkpoint"
OTHER = "other"  # previews, NAME.json, ...
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


@dataclass(frozen=True)
class JobOutputs:
    """The kind of each file a job wrote, from its training type and output folder."""

    mode: str = "lora"
    output_dir: str = ""

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> JobOutputs:
        output = spec.get("output") or {}
        return cls(mode=str(spec.get("mode") or "lora"), output_dir=str(output.get("dir") or ""))

    @property
    def full(self) -> bool:
        """A full fine-tune: its model files in output.dir are checkpoints."""
        return self.mode == FULL_FINETUNE

    def kind(self, path: str | Path) -> str:
        """LORA, CHECKPOINT or OTHER. A full fine-tune writes its checkpoints directly into output.dir
        (no family folder); any other model file of it is the extracted LoRA."""
        if not str(path).lower().endswith(MODEL_SUFFIXES):
            return OTHER
        if self.full and self.output_dir and _same_folder(Path(path).parent, self.output_dir):
            return CHECKPOINT
        return LORA

    def kinds(self, files: Iterable[str]) -> dict[str, str]:
        """{path: kind} for the job's files."""
        return {str(f): self.kind(f) for f in files}

    def count(self, files: Iterable[str]) -> dict[str, int]:
        """How many LoRA and checkpoint files there are among `files`."""
        counts = {LORA: 0, CHECKPOINT: 0}
        for path in files:
            kind = self.kind(path)
            if kind in counts:
                counts[kind] += 1
        return counts


def checkpoint_name_taken(stems: set[str], name: str, reserved: Iterable[str] = ()) -> bool:
    """True when a checkpoint `name` exists (any case), a file starting with "name-" exists (its epoch
    files would sit among them), or a waiting or running job has reserved the name."""
    key = name.lower()
    if key in {r.lower() for r in reserved}:
        return True
    return key in stems or any(stem.startswith(key + "-") for stem in stems)


def free_checkpoint_name(
    checkpoint_dir: Path,
    name: str,
    reserved: Iterable[str] = (),
    listed: Iterable[str | Path] = (),
    lora_dir: Path | None = None,
) -> str:
    """`name`, or the first free `name_2`, `name_3` ... for a full fine-tune's checkpoints.

    Free means: no model file of that name anywhere under `checkpoint_dir` nor among `listed` (the
    checkpoints the WebUI lists from its other folders), and, when `lora_dir` is given (a LoRA will be
    extracted), no LoRA of that name either, so the checkpoint and its LoRA share one name.
    """
    stems = lora_stems(checkpoint_dir) | {Path(p).stem.lower() for p in listed}
    loras = lora_stems(lora_dir) if lora_dir is not None else set()
    reserved = list(reserved)
    candidate, n = name, 1
    while checkpoint_name_taken(stems, candidate, reserved) or (
        lora_dir is not None and name_taken(lora_dir, candidate, loras, reserved)
    ):
        n += 1
        candidate = f"{name}_{n}"
    return candidate
