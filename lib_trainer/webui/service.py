"""The one place the tab and the REST API go through to start and follow training jobs.

It turns what the user filled in into a complete job spec using what the host knows (the loaded checkpoint,
its VAE and model type, the LoRA folder, and for a full fine-tune the checkpoint folder), picks a name that
is free in the folder the job writes to, decides the GPU handoff, and hands the job to the process-wide
JobManager. When files land it rescans the WebUI's Lora list or checkpoint list. One service per WebUI
process: "Reload UI" gets the same one (and the same running jobs) back.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..export.lora_names import next_free_name
from ..jobs import (
    ACTIVE,
    QUEUED,
    JobError,
    JobHooks,
    JobManager,
    JobRecord,
    get_manager,
    make_trainer_command,
)
from ..jobs.process import TrainerCommand, trainer_python
from ..jobs.records import DONE
from ..spec import SpecError, spec_from_dict, spec_to_dict
from ..spec.finetune_rules import high_learning_rate, saved_checkpoints
from ..spec.schema import FULL_FINETUNE, JobSpec
from . import compare as grids
from .handoff import AUTO, GIB, GpuHandoff, choose_gpu_mode, spec_need_bytes
from .host_api import CURRENT, Host, ModelInfo
from .job_outputs import CHECKPOINT, LORA, JobOutputs, free_checkpoint_name
from .lora_tags import expand_num_values, missing_epochs_message
from .presets import PresetStore

log = logging.getLogger("lib_trainer.webui")

DATA_SUBDIR = Path("outputs") / "lora-trainer"
MANY_CHECKPOINTS = 3  # more files than this: tell the user how much disk a full fine-tune will take


@dataclass
class Submitted:
    """What the tab tells the user after Start."""

    record: JobRecord
    output_name: str
    gpu_mode: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Compared:
    """A finished comparison grid (saved in the job's folder) and what to tell the user."""

    path: Path
    infotext: str
    request: grids.CompareRequest
    notes: list[str] = field(default_factory=list)


class CompareError(RuntimeError):
    """The comparison cannot run now; the message says why and what to do."""


class CompareValueError(CompareError):
    """A value of the comparison (prompt, epochs, strengths, size ...) is wrong; the message names it."""


class CompareUnsupported(CompareError):
    """The job made no LoRA epochs to compare (a full fine-tune makes checkpoints)."""


def taken_note(name: str, free: str, mode: str = "lora", extract_lora: bool = False) -> str:
    """What the user is told when the asked-for name is taken and another one will be used."""
    if mode != FULL_FINETUNE:
        return f'A LoRA named "{name}" already exists; this one will be saved as "{free}".'
    what = "A checkpoint or LoRA" if extract_lora else "A checkpoint"
    return f'{what} named "{name}" already exists; this one will be saved as "{free}".'


def _rate_note(spec: JobSpec) -> str | None:
    """A LoRA's learning rate burns a checkpoint: say so before the trainer warns."""
    rate = high_learning_rate(spec)
    if rate is None:
        return None
    return (
        f"The learning rate {rate:g} is high for a full fine-tune, which changes every weight of the "
        "model; 1e-6 to 5e-6 is usual (Advanced settings, Optimizer & schedule)."
    )


def _disk_note(spec: JobSpec) -> str | None:
    """Every saved epoch of a full fine-tune is a whole model: warn when that adds up."""
    files = saved_checkpoints(spec, spec.training.epochs)
    if files <= MANY_CHECKPOINTS:
        return None
    return (
        f"It will save up to {files} checkpoints, each as big as the base model; set Save every N epochs "
        "(Advanced settings, Saving) higher to keep fewer."
    )


_HOSTS_WITHOUT_BUNDLED_EMBEDDINGS = {"forge": "Forge", "reforge": "reForge"}
"""Hosts whose LoRA loader ignores a LoRA file's bundled embeddings (`bundle_emb.*`), the keys
network.learn_trigger saves the learnt trigger word in (docs/job-spec.md, "Learning the trigger word")."""


def _bundled_embedding_note(host_name: str) -> str:
    """Said when a job learns its trigger word on a host that will not use it: the LoRA trains on the learnt
    word, so without it the trigger brings the subject less often than a LoRA trained with the option off."""
    return (
        f"Learn the trigger word (network.learn_trigger) is on, but {host_name} ignores the learnt word saved "
        "inside the LoRA file (AUTOMATIC1111 uses it), so here this LoRA will bring the subject less reliably "
        "than one trained with the option off. Turn the option off for a LoRA you will use in this WebUI."
    )


def _positive(value: Any) -> bool:
    """A spec value (not validated yet) that is a number above 0."""
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


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
        self._refreshed_files: dict[str, dict[str, int]] = {}
        self._outputs: dict[str, JobOutputs] = {}
        self._refresh_lock = threading.Lock()
        self._compare_lock = threading.Lock()
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

    def free_name(self, name: str, mode: str = "lora", extract_lora: bool = False) -> str:
        """A name nothing of the job's kind uses yet: free in the whole LoRA folder for a LoRA; for a full
        fine-tune free among the WebUI's checkpoints (and its LoRAs too when one will be extracted)."""
        reserved = self.reserved_names()
        if mode != FULL_FINETUNE:
            return next_free_name(self.host.lora_dir(), name, reserved)
        listed = [choice.path for choice in self.host.checkpoints()]
        lora_dir = self.host.lora_dir() if extract_lora else None
        return free_checkpoint_name(self.host.checkpoint_dir(), name, reserved, listed, lora_dir)

    def prepare_spec(self, spec_dict: dict[str, Any], checkpoint: str = CURRENT) -> tuple[dict, list[str]]:
        """A validated, complete job spec for the WebUI (model, VAE, output folder filled in) and notes for
        the user. Raises SpecError with field paths when something is wrong."""
        spec = copy.deepcopy(spec_dict)
        notes: list[str] = []
        self._set_model(spec, self.resolve_model(checkpoint))
        mode = str(spec.get("mode") or "lora")
        extract = mode == FULL_FINETUNE and _positive((spec.get("finetune") or {}).get("extract_lora_rank"))
        self._set_output_dirs(spec, mode)
        name = str(spec.get("name") or "").strip()
        if name:
            free = self.free_name(name, mode, extract)
            if free != name:
                notes.append(taken_note(name, free, mode, extract))
            spec["name"] = free
        job = spec_from_dict(spec)
        resolved = spec_to_dict(job)
        if mode == FULL_FINETUNE:
            notes += self._full_finetune_notes(resolved, job)
        if job.network.learn_trigger and self.host.kind in _HOSTS_WITHOUT_BUNDLED_EMBEDDINGS:
            notes.append(_bundled_embedding_note(_HOSTS_WITHOUT_BUNDLED_EMBEDDINGS[self.host.kind]))
        return resolved, notes

    @staticmethod
    def _set_model(spec: dict[str, Any], model: ModelInfo) -> None:
        """The checkpoint, and what the host knows about it unless the spec says otherwise."""
        section = spec.setdefault("model", {})
        section["checkpoint"] = model.checkpoint
        if section.get("vae") in (CURRENT, None):  # "" keeps the spec's meaning: the checkpoint's own VAE
            section["vae"] = model.vae or "none"
        if model.model_type and not section.get("model_type"):
            section["model_type"] = model.model_type
        if model.prediction_type and not section.get("prediction_type"):
            section["prediction_type"] = model.prediction_type

    def _set_output_dirs(self, spec: dict[str, Any], mode: str) -> None:
        """LoRAs go to the LoRA folder, one folder per LoRA; a full fine-tune's checkpoints go straight into
        the checkpoint folder (a subfolder would show up in their names in the WebUI's list), and the LoRA it
        may extract into the LoRA folder."""
        output = spec.setdefault("output", {})
        if mode != FULL_FINETUNE:
            output["dir"] = str(self.host.lora_dir())
            output["family_folder"] = True
            return
        output["dir"] = str(self.host.checkpoint_dir())
        output["family_folder"] = False
        finetune = spec.get("finetune")
        spec["finetune"] = {
            **(finetune if isinstance(finetune, dict) else {}),
            "lora_dir": str(self.host.lora_dir()),
        }

    def _full_finetune_notes(self, spec: dict[str, Any], job: JobSpec) -> list[str]:
        """What a full fine-tune asks of the user's machine, said before it starts."""
        notes = [f"The checkpoint will be saved in {spec['output']['dir']} as {spec['name']}.safetensors."]
        return notes + [n for n in (_rate_note(job), _disk_note(job), self._vram_note(spec)) if n]

    def _vram_note(self, spec: dict[str, Any]) -> str | None:
        """When the job will not fit the GPU at all (its total memory, not what is free now)."""
        memory = self.host.gpu_memory()
        need = spec_need_bytes(spec)
        if memory is None or memory[1] >= need:
            return None
        return (
            f"This full fine-tune needs about {need / GIB:.0f} GiB of GPU memory and the GPU has "
            f"{memory[1] / GIB:.0f} GiB; turn on Gradient checkpointing, use the AdamW8bit optimizer and "
            "batch size 1, or train a LoRA instead."
        )

    def submit(
        self,
        spec_dict: dict[str, Any],
        checkpoint: str = CURRENT,
        gpu_mode: str = AUTO,
        compare_when_done: bool = False,
    ) -> Submitted:
        spec, notes = self.prepare_spec(spec_dict, checkpoint)
        mode, why = choose_gpu_mode(self.host, gpu_mode, spec_need_bytes(spec))
        if gpu_mode == AUTO:
            notes.append(f"GPU sharing: {mode} ({why}).")
        if compare_when_done and spec["mode"] == FULL_FINETUNE:
            compare_when_done = False
            notes.append("Compare epochs works on LoRA jobs, so no comparison grid is made for this one.")
        record = self.manager.submit(spec, gpu=self.host.trainer_gpu(), gpu_mode=mode)
        if compare_when_done:
            grids.write_settings(record.job_dir, compare_when_done=True)
        return Submitted(record=record, output_name=spec["name"], gpu_mode=mode, notes=notes)

    # ------------------------------------------------------------ after files land

    def job_outputs(self, job_id: str) -> JobOutputs:
        """What kind of files the job writes, from its job.json (read once: it never changes); a LoRA job
        when the job or its file is not there (any .safetensors is then taken for a LoRA)."""
        known = self._outputs.get(job_id)
        if known is not None:
            return known
        try:
            record = self.manager.get(job_id)
            spec = json.loads((Path(record.job_dir) / "job.json").read_text(encoding="utf-8"))
        except (JobError, OSError, ValueError):
            return JobOutputs()
        outputs = JobOutputs.from_spec(spec if isinstance(spec, dict) else {})
        self._outputs[job_id] = outputs
        return outputs

    def file_kinds(self, job_id: str, files: list[str]) -> dict[str, str]:
        """{path: "lora" | "checkpoint" | "other"} for a job's files, so no checkpoint is called a LoRA."""
        return self.job_outputs(job_id).kinds(files)

    def refresh_if_new_files(self, job_id: str, files: list[str]) -> bool:
        """Rescan the WebUI's LoRA list when a job reported new LoRA files (epoch files land while it runs)
        and its checkpoint list when a full fine-tune reported new checkpoints."""
        counts = self.job_outputs(job_id).count(files)
        with self._refresh_lock:
            seen = self._refreshed_files.setdefault(job_id, {})
            grown = [kind for kind, count in counts.items() if count > seen.get(kind, 0)]
            seen.update({kind: counts[kind] for kind in grown})
        refreshed = [self._refresh_list(kind) for kind in grown]
        return any(refreshed)

    def _refresh_list(self, kind: str) -> bool:
        refresh = {LORA: self.host.refresh_loras, CHECKPOINT: self.host.refresh_checkpoints}[kind]
        try:
            refresh()
        except Exception:  # noqa: BLE001 - a failed rescan must not break progress updates
            log.exception("could not refresh the WebUI's %s list", kind)
            return False
        return True

    def _after_finish(self, record: JobRecord) -> None:
        try:
            self.handoff.after_finish(record)
        finally:
            self.refresh_if_new_files(record.id, record.files)
        settings = grids.read_settings(record.job_dir)
        if (
            record.status == DONE
            and settings.get("compare_when_done")
            and "auto_compare" not in settings
            and not self.job_outputs(record.id).full
        ):
            grids.write_settings(record.job_dir, auto_compare={"status": "waiting"})
            threading.Thread(
                target=self._auto_compare, args=(record.id,), name="lora-trainer-compare", daemon=True
            ).start()

    # ------------------------------------------------------------ epoch x strength comparison

    def _job_spec(self, record: JobRecord) -> dict[str, Any]:
        try:
            return json.loads((Path(record.job_dir) / "job.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CompareError(
                f"The job's settings file {record.job_dir}/job.json cannot be read: {exc}"
            ) from exc

    def compare_request(self, job_id: str) -> grids.CompareRequest:
        """The default grid of a job: its sample prompt (or trigger word), saved epochs, strengths 0.4-1."""
        record = self.manager.get(job_id)
        self._refuse_full_finetune(record)
        family = record.output_name or record.name
        return grids.default_request(self._job_spec(record), family, record.files)

    def _refuse_full_finetune(self, record: JobRecord) -> None:
        """Compare epochs swaps LoRA epoch files in a prompt: a full fine-tune has checkpoints instead."""
        outputs = self.job_outputs(record.id)
        if not outputs.full:
            return
        family = record.output_name or record.name
        final = next(
            (Path(f).name for f in record.files if outputs.kind(f) == CHECKPOINT and Path(f).stem == family),
            f"{family}.safetensors",
        )
        raise CompareUnsupported(
            f'Compare epochs works on LoRA jobs. "{family}" is a full fine-tune: pick its checkpoint {final} '
            "in the WebUI's checkpoint list to try it."
        )

    def compare(
        self, job_id: str, request: grids.CompareRequest | None = None, *, wait: bool = False
    ) -> Compared:
        """Make the grid with the WebUI's txt2img and keep it in the job's folder. Refuses (unless `wait`)
        while an exclusive training run holds the GPU, and runs one comparison at a time."""
        record = self.manager.get(job_id)
        self._refuse_full_finetune(record)
        family = record.output_name or record.name
        if record.is_active or record.status == QUEUED:
            raise CompareError(f'"{family}" is still training; compare its epochs when it has finished.')
        if not any(Path(f).suffix == ".safetensors" for f in record.files):
            raise CompareError(f'"{family}" saved no LoRA files, so there is nothing to compare.')
        holder = self.handoff.holder()
        if holder is not None and not wait:
            raise CompareError(
                f'Training job "{holder}" has paused image generation until it ends. Compare after it has '
                'finished, or train with GPU sharing "Shared".'
            )
        try:
            request = grids.checked(request or self.compare_request(job_id))
        except (ValueError, grids.AxisError) as exc:
            raise CompareValueError(str(exc)) from exc
        notes = self._model_notes(self._job_spec(record))
        if not self._compare_lock.acquire(blocking=wait):
            raise CompareError("A comparison grid is being made already; wait until it is done.")
        try:
            self.host.refresh_loras()
            self._check_epochs_exist(request)
            self.host.acquire_generation_lock()
            try:
                result = self.host.run_lora_grid(request)
            finally:
                self.host.release_generation_lock()
        except grids.AxisError as exc:
            raise CompareError(str(exc)) from exc
        finally:
            self._compare_lock.release()
        path = grids.save_grid(record.job_dir, request, result)
        return Compared(path=path, infotext=result.infotext, request=request, notes=notes + result.notes)

    def _check_epochs_exist(self, request: grids.CompareRequest) -> None:
        """Fail before taking the GPU when an asked-for epoch has no file (the axis checks again)."""
        if not request.epochs:
            return
        names = self.host.lora_names()
        missing = missing_epochs_message(request.family, expand_num_values(request.epochs), names)
        if missing:
            raise CompareValueError(missing)

    def _model_notes(self, spec: dict[str, Any]) -> list[str]:
        trained_on = str((spec.get("model") or {}).get("checkpoint") or "")
        loaded = self.host.loaded_model()
        if trained_on and loaded is not None and Path(loaded.checkpoint) != Path(trained_on):
            return [
                f"The WebUI has {loaded.name} loaded; this LoRA was trained on {Path(trained_on).name}. "
                "Load that checkpoint to compare on the model it was made for."
            ]
        return []

    def _auto_compare(self, job_id: str) -> None:
        job_dir = self.manager.get(job_id).job_dir
        try:
            done = self.compare(job_id, wait=True)
        except Exception as exc:  # noqa: BLE001 - reported in the job's folder and the tab, never raised
            log.warning("comparison grid for job %s failed: %s", job_id, exc)
            grids.write_settings(job_dir, auto_compare={"status": "failed", "message": str(exc)})
            return
        grids.write_settings(job_dir, auto_compare={"status": "done", "grid": str(done.path)})


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
