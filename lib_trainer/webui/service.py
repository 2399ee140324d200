"""The one place the tab (and later the REST API) go through to start and follow training jobs.

It turns what the user filled in into a complete job spec using what the host knows (the loaded checkpoint,
its VAE and model type, the LoRA folder), picks a LoRA name that is free in the whole LoRA folder, decides
the GPU handoff, and hands the job to the process-wide JobManager. One service per WebUI process: "Reload
UI" gets the same one (and the same running jobs) back.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..export.lora_names import next_free_name
from ..jobs import ACTIVE, QUEUED, JobHooks, JobManager, JobRecord, get_manager, make_trainer_command
from ..jobs.process import TrainerCommand, trainer_python
from ..spec import SpecError, spec_from_dict, spec_to_dict
from .handoff import AUTO, GpuHandoff, choose_gpu_mode, estimated_need_bytes
from .host_api import CURRENT, Host, ModelInfo
from .presets import PresetStore

log = logging.getLogger("lib_trainer.webui")

DATA_SUBDIR = Path("outputs") / "lora-trainer"


@dataclass
class Submitted:
    """What the tab tells the user after Start."""

    record: JobRecord
    output_name: str
    gpu_mode: str
    notes: list[str] = field(default_factory=list)


class TrainerService:
    def __init__(self, host: Host, *, trainer_command: TrainerCommand | None = None, watch: bool = True):
        self.host = host
        self.root = Path(host.data_dir()) / DATA_SUBDIR
        self.presets = PresetStore(self.root / "presets")
        self.handoff = GpuHandoff(host)
        command = trainer_command or make_trainer_command(trainer_python(host.trainer_venv()))
        hooks = JobHooks(
            before_start=self.handoff.before_start,
            after_finish=self._after_finish,
            after_reattach=self.handoff.after_reattach,
        )
        self.manager: JobManager = get_manager(self.root / "jobs", trainer_command=command, hooks=hooks)
        self._refreshed_files: dict[str, int] = {}
        self._refresh_lock = threading.Lock()
        if watch:
            self.manager.start_watcher(1.0)

    # ------------------------------------------------------------ submitting

    def resolve_model(self, checkpoint: str) -> ModelInfo:
        """The model a job trains on: the WebUI's loaded one ("current") or one from its checkpoint list."""
        loaded = self.host.loaded_model()
        if not checkpoint or checkpoint == CURRENT:
            if loaded is None:
                raise SpecError(
                    [("model.checkpoint", "the WebUI has no model loaded; pick a checkpoint in the list")]
                )
            return loaded
        for choice in self.host.checkpoints():
            if checkpoint in (choice.title, choice.path):
                if loaded is not None and Path(loaded.checkpoint) == Path(choice.path):
                    return loaded
                vae = loaded.vae if loaded is not None else None
                return ModelInfo(checkpoint=choice.path, title=choice.title, vae=vae, loaded=False)
        if Path(checkpoint).is_file():
            return ModelInfo(checkpoint=checkpoint, title=Path(checkpoint).name, loaded=False)
        raise SpecError([("model.checkpoint", f"{checkpoint} is not in the WebUI's checkpoint list")])

    def reserved_names(self) -> list[str]:
        """Names of jobs that are waiting or running: their files do not exist yet but will."""
        return [
            r.output_name or r.name for r in self.manager.list() if r.status == QUEUED or r.status in ACTIVE
        ]

    def free_name(self, name: str) -> str:
        return next_free_name(self.host.lora_dir(), name, self.reserved_names())

    def prepare_spec(self, spec_dict: dict[str, Any], checkpoint: str = CURRENT) -> tuple[dict, list[str]]:
        """A validated, complete job spec for the WebUI (model, VAE, output folder filled in) and notes for
        the user. Raises SpecError with field paths when something is wrong."""
        spec = copy.deepcopy(spec_dict)
        notes: list[str] = []
        model = self.resolve_model(checkpoint)
        section = spec.setdefault("model", {})
        section["checkpoint"] = model.checkpoint
        if section.get("vae") in (CURRENT, None):  # "" keeps the spec's meaning: the checkpoint's own VAE
            section["vae"] = model.vae or "none"
        if model.model_type and not section.get("model_type"):
            section["model_type"] = model.model_type
        if model.prediction_type and not section.get("prediction_type"):
            section["prediction_type"] = model.prediction_type
        output = spec.setdefault("output", {})
        output["dir"] = str(self.host.lora_dir())
        output["family_folder"] = True
        name = str(spec.get("name") or "").strip()
        if name:
            free = self.free_name(name)
            if free != name:
                notes.append(f'A LoRA named "{name}" already exists; this one will be saved as "{free}".')
            spec["name"] = free
        return spec_to_dict(spec_from_dict(spec)), notes

    def submit(self, spec_dict: dict[str, Any], checkpoint: str = CURRENT, gpu_mode: str = AUTO) -> Submitted:
        spec, notes = self.prepare_spec(spec_dict, checkpoint)
        training = spec["training"]
        need = estimated_need_bytes(
            spec["model"].get("model_type"), training["batch_size"], training["gradient_checkpointing"]
        )
        mode, why = choose_gpu_mode(self.host, gpu_mode, need)
        if gpu_mode == AUTO:
            notes.append(f"GPU sharing: {mode} ({why}).")
        record = self.manager.submit(spec, gpu=self.host.trainer_gpu(), gpu_mode=mode)
        return Submitted(record=record, output_name=spec["name"], gpu_mode=mode, notes=notes)

    # ------------------------------------------------------------ after files land

    def refresh_if_new_files(self, job_id: str, files: list[str]) -> bool:
        """Rescan the WebUI's LoRA list when a job reported new LoRA files (epoch files land while it runs)."""
        count = sum(1 for f in files if f.endswith(".safetensors"))
        with self._refresh_lock:
            if count <= self._refreshed_files.get(job_id, 0):
                return False
            self._refreshed_files[job_id] = count
        try:
            self.host.refresh_loras()
        except Exception:  # noqa: BLE001 - a failed rescan must not break progress updates
            log.exception("could not refresh the WebUI's LoRA list")
            return False
        return True

    def _after_finish(self, record: JobRecord) -> None:
        try:
            self.handoff.after_finish(record)
        finally:
            self.refresh_if_new_files(record.id, record.files)


_SERVICE: TrainerService | None = None
_SERVICE_LOCK = threading.Lock()


def get_service(host: Host, **kwargs: Any) -> TrainerService:
    """The process-wide service. A later call with a new host object (after "Reload UI") keeps the jobs and
    swaps in the new host."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None or Path(host.data_dir()) / DATA_SUBDIR != _SERVICE.root:
            _SERVICE = TrainerService(host, **kwargs)
        else:
            _SERVICE.host = host
            _SERVICE.handoff.host = host
        return _SERVICE
