"""What the Train LoRA/DreamBooth tab does, without gradio: every button and poll of the tab is a method here that
takes plain values and returns plain values (HTML strings, lists). `ui.py` only wires these to components,
so the tab's behaviour is tested without a browser or a WebUI.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..jobs import JobError
from ..spec import SpecError, default_spec_dict
from ..spec.schema import FULL_FINETUNE
from . import compare as grids
from . import form_fields, progress_view
from .dataset_summary import render_summary_html, summarize_spec_dataset
from .handoff import AUTO
from .host_api import CURRENT
from .install_status import InstallStatus
from .presets import Preset, apply_preset, default_builtin
from .service import CompareError, TrainerService, taken_note

log = logging.getLogger("lib_trainer.webui")

CURRENT_LABEL = "Loaded in the WebUI"
TAB_LABELS = {
    "name": "LoRA name",
    "dataset.path": "Dataset folder",
    "dataset.trigger_word": "Trigger word",
    "model.checkpoint": "Base model",
    "output.dir": "LoRA folder",
}
# The name box's label by training type: a full fine-tune names a checkpoint.
NAME_LABELS = {"lora": "LoRA name", "dreambooth-lora": "LoRA name", FULL_FINETUNE: "Checkpoint name"}
DREAMBOOTH_TAB = "DreamBooth"  # form_fields groups shown when the training type is picked
FULL_FINETUNE_TAB = "Full fine-tune"


@dataclass
class TabValues:
    """The default view's inputs (everything else is in the Advanced section's FIELDS values)."""

    dataset: str = ""
    name: str = ""
    trigger: str = ""
    preset: str = ""
    checkpoint: str = CURRENT_LABEL
    gpu_mode: str = AUTO
    compare_when_done: bool = False


@dataclass
class CompareFields:
    """The Compare epochs inputs for one job (editable by the user before a run)."""

    prompt: str = ""
    negative_prompt: str = ""
    epochs: str = ""
    strengths: str = ""
    seed: int = 1
    grid: str | None = None  # the job's latest grid image, if it has one
    infotext: str = ""
    message: str = ""


@dataclass
class ModeView:
    """How the main view follows the training type: the class prompt shows for the DreamBooth types, the
    full fine-tune has no epochs to compare, and its settings are one click away."""

    dreambooth: bool  # show the class prompt
    full: bool  # a full fine-tune: hide "Compare epochs when done"
    name_label: str
    advanced_tab: str | None  # the Advanced settings tab to open; None = leave the section as it is
    note: str  # message HTML; "" = leave the message as it is


@dataclass
class PollView:
    job_choices: list[str]  # job ids (readable: time and name) - gradio 3.41 dropdowns take plain strings
    selected: str | None
    progress_html: str
    loss_svg: str
    gallery: list[tuple[str, str]]
    log_html: str
    queue_html: str
    history_html: str
    active: bool  # a job is queued or running (the browser polls faster)


def _number(value: Any) -> float:
    """A form value as a number (0 for empty or unreadable text)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _box(kind: str, lines: list[str]) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<div class="lora-trainer-message lora-trainer-{kind}"><ul>{items}</ul></div>'


class TabController:
    def __init__(self, service: TrainerService, install: InstallStatus | None = None):
        self.service = service
        self.install = install

    # ------------------------------------------------------------ model and presets

    @property
    def host(self):
        return self.service.host

    def checkpoint_choices(self) -> list[str]:
        return [CURRENT_LABEL, *(c.title for c in self.host.checkpoints())]

    def model_html(self, checkpoint: str = CURRENT_LABEL) -> str:
        """The base model as the user should see it: the loaded checkpoint, its VAE and type."""
        choice = CURRENT if checkpoint in ("", CURRENT_LABEL, None) else checkpoint
        try:
            model = self.service.resolve_model(choice)
        except SpecError as exc:
            return _box("problems", [message for _, message in exc.errors])
        vae = Path(model.vae).name if model.vae else "the one built into the checkpoint"
        kind = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sd2-v": "SD 2.x (v-prediction)", "sdxl": "SDXL"}.get(
            model.model_type or "", "detected when training starts"
        )
        state = "loaded in the WebUI" if model.loaded else "not loaded now"
        rows = [("Checkpoint", model.title), ("VAE", vae), ("Model type", kind), ("State", state)]
        body = "".join(
            f'<div><span class="k">{html.escape(k)}</span> <span class="v">{html.escape(v)}</span></div>'
            for k, v in rows
        )
        return f'<div class="lora-trainer-model">{body}</div>'

    def preset_titles(self) -> list[str]:
        return [p.title for p in self.service.presets.list()]

    def default_preset(self) -> str:
        """A built-in preset for the loaded model's family (SDXL or SD1.5); the first one otherwise."""
        model = self.host.loaded_model()
        preset = default_builtin(
            self.service.presets.list(), model is not None and model.model_type == "sdxl"
        )
        return preset.title if preset else ""

    def initial_values(self) -> list[Any]:
        """Advanced values for a fresh tab: the spec defaults with the default preset applied."""
        spec = default_spec_dict()
        title = self.default_preset()
        if title:
            spec = apply_preset(spec, self.service.presets.get(title))
        spec.setdefault("model", {})["vae"] = CURRENT
        return form_fields.values_from_spec(spec)

    def apply_preset(self, title: str, values: list[Any]) -> tuple[list[Any], str]:
        if not title:
            return list(values), ""
        try:
            preset: Preset = self.service.presets.get(title)
            spec = form_fields.spec_from_values(default_spec_dict(), values)
        except (KeyError, SpecError) as exc:
            return list(values), self._error_html(exc)
        # A preset is applied to the defaults, not on top of the previous preset, so picking it always gives
        # the same settings; only what describes this run's content (sample prompts, VAE, its DreamBooth
        # prompts and class folder) is kept, and the training type and full fine-tune settings unless the
        # preset sets them (then the Training type switch follows the preset).
        merged = apply_preset(default_spec_dict(), preset)
        merged["model"]["vae"] = spec["model"].get("vae", CURRENT)
        merged["samples"]["prompts"] = spec["samples"].get("prompts", [])
        if "mode" not in preset.spec:
            merged["mode"] = spec.get("mode", merged.get("mode"))
        merged["dreambooth"] = {**merged.get("dreambooth", {}), **spec.get("dreambooth", {})}
        merged["finetune"] = {**spec.get("finetune", {}), **preset.spec.get("finetune", {})}
        note = f'Preset "{preset.title}" applied.'
        return form_fields.values_from_spec(merged), _box(
            "info", [note, preset.description] if preset.description else [note]
        )

    def save_preset(self, title: str, values: list[Any]) -> tuple[str, list[str]]:
        try:
            spec = form_fields.spec_from_values(default_spec_dict(), values)
            preset = self.service.presets.save(title, spec)
        except (ValueError, SpecError) as exc:
            return self._error_html(exc), self.preset_titles()
        return _box("info", [f'Preset "{preset.title}" saved.']), self.preset_titles()

    def delete_preset(self, title: str) -> tuple[str, list[str]]:
        try:
            self.service.presets.delete(title)
        except (KeyError, ValueError) as exc:
            return self._error_html(exc), self.preset_titles()
        return _box("info", [f'Preset "{title}" deleted.']), self.preset_titles()

    # ------------------------------------------------------------ dataset and start

    def build_spec(self, tab: TabValues, values: list[Any]) -> dict[str, Any]:
        base = default_spec_dict()
        base["name"] = tab.name.strip()
        base["dataset"]["path"] = tab.dataset.strip()
        base["dataset"]["trigger_word"] = tab.trigger.strip()
        base["model"]["checkpoint"] = CURRENT
        base["output"]["dir"] = str(self.host.lora_dir())
        return form_fields.spec_from_values(base, values)

    def dataset_html(self, tab: TabValues, values: list[Any]) -> str:
        if not tab.dataset.strip():
            return ""
        try:
            spec = self.build_spec(tab, values)
        except SpecError:
            spec = default_spec_dict()
        model_type = None
        if tab.checkpoint in ("", CURRENT_LABEL):
            model = self.host.loaded_model()
            model_type = model.model_type if model else None
        spec["dataset"].update(path=tab.dataset.strip(), trigger_word=tab.trigger)
        summary = summarize_spec_dataset(spec, model_type)
        return render_summary_html(summary)

    def name_hint(self, name: str, mode: str = "lora", extract_rank: Any = 0) -> str:
        """A note when the name is taken (among LoRAs, or checkpoints for a full fine-tune)."""
        name = (name or "").strip()
        if not name:
            return ""
        extract = mode == FULL_FINETUNE and _number(extract_rank) > 0
        free = self.service.free_name(name, mode or "lora", extract)
        if free == name:
            return ""
        return _box("info", [taken_note(name, free, mode, extract)])

    def mode_view(self, mode: str) -> ModeView:
        """What changes in the tab when the training type changes."""
        if mode == FULL_FINETUNE:
            note = _box(
                "info",
                [
                    "Full fine-tune: the whole model is trained and saved as a new checkpoint in "
                    f"{self.host.checkpoint_dir()}, listed with the WebUI's checkpoints when it is done. "
                    "It needs much more VRAM than a LoRA and a learning rate around 1e-6 to 5e-6 (Advanced "
                    "settings, Optimizer & schedule). Fill in Class prompt, or set Prior loss weight to 0.",
                ],
            )
            return ModeView(True, True, NAME_LABELS[FULL_FINETUNE], FULL_FINETUNE_TAB, note)
        if mode == "dreambooth-lora":
            note = _box(
                "info",
                [
                    "DreamBooth LoRA: fill in Class prompt (what your subject is, e.g. a photo of a dog); "
                    "class images are made with the base model before training starts."
                ],
            )
            return ModeView(True, False, NAME_LABELS[mode], DREAMBOOTH_TAB, note)
        return ModeView(False, False, NAME_LABELS["lora"], None, "")

    def start(self, tab: TabValues, values: list[Any]) -> tuple[str, str | None]:
        """(message HTML, id of the new job or None)."""
        if self.install is not None and not self.install.ok:
            return _box("problems", [self.install.message, self.install.fix]), None
        checkpoint = CURRENT if tab.checkpoint in ("", CURRENT_LABEL) else tab.checkpoint
        try:
            spec = self.build_spec(tab, values)
            submitted = self.service.submit(
                spec,
                checkpoint=checkpoint,
                gpu_mode=tab.gpu_mode or AUTO,
                # hidden for a full fine-tune, but it may still hold a tick from before the switch
                compare_when_done=bool(tab.compare_when_done) and spec.get("mode") != FULL_FINETUNE,
            )
        except SpecError as exc:
            return self._error_html(exc), None
        except JobError as exc:
            return _box("problems", [str(exc)]), None
        record = submitted.record
        busy = any(r.is_active for r in self.service.manager.list())
        if record.position == 0 and not busy:
            where = "It starts now."
        elif record.position == 0:
            where = "It starts when the running job ends."
        else:
            where = f"It is number {(record.position or 0) + 1} in the queue."
        lines = [f'Training job for "{submitted.output_name}" queued. {where}', *submitted.notes]
        return _box("info", lines), record.id

    def _error_html(self, exc: Exception) -> str:
        if isinstance(exc, SpecError):
            lines = [self._explain(path, message) for path, message in exc.errors] or [str(exc)]
        else:
            lines = [str(exc.args[0]) if exc.args else str(exc)]
        return _box("problems", lines)

    @staticmethod
    def _explain(path: str, message: str) -> str:
        """ "Label: message" for a field error, in the words the tab shows (not the spec's dotted path)."""
        prompt = re.match(r"samples\.prompts\[(\d+)\]", path)
        if path in TAB_LABELS:
            label = TAB_LABELS[path]
        elif prompt:
            label = f"Sample prompts, prompt {int(prompt.group(1)) + 1}"
        else:
            try:
                label = form_fields.field_by_path(path).label
            except KeyError:
                label = path
        return message if message.startswith(f"{label}:") else f"{label}: {message}"

    # ------------------------------------------------------------ following jobs

    def pick_job(self, selected: str | None) -> str | None:
        """The job to show: the user's pick if it still exists, else the running one, else the newest."""
        records = self.service.manager.list()
        ids = [r.id for r in records]
        if selected in ids:
            return selected
        return ids[0] if ids else None

    def poll(self, selected: str | None = None) -> PollView:
        manager = self.service.manager
        records = manager.list()
        job_id = self.pick_job(selected)
        progress = None
        if job_id is not None:
            try:
                progress = manager.progress(job_id)
            except JobError:
                progress = None
        if progress is not None:
            self.service.refresh_if_new_files(job_id, progress.get("files") or [])
            progress["file_kinds"] = self.service.file_kinds(job_id, progress.get("files") or [])
        active = any(r.status in ("queued", "running", "stopping") for r in records)
        return PollView(
            job_choices=[r.id for r in records],
            selected=job_id,
            progress_html=progress_view.render_progress_html(progress),
            loss_svg=progress_view.render_loss_chart_svg(progress.get("loss_history") if progress else []),
            gallery=progress_view.gallery_items(progress),
            log_html=progress_view.render_log_html(progress.get("log_tail") if progress else []),
            queue_html=progress_view.render_queue_html(records),
            history_html=progress_view.render_history_html(records, file_kinds=self._file_kinds(records)),
            active=active,
        )

    def _file_kinds(self, records: list) -> dict[str, str]:
        """{path: kind} over the listed jobs' files, so the history labels checkpoints and LoRAs."""
        kinds: dict[str, str] = {}
        for record in records:
            kinds.update(self.service.file_kinds(record.id, record.files))
        return kinds

    def act(self, action: str, job_id: str | None) -> str:
        """Cancel / resume / remove / move a job; returns a message box."""
        if not job_id:
            return _box("problems", ["Pick a job first."])
        manager = self.service.manager
        try:
            record = manager.get(job_id)
            if action == "cancel":
                record = manager.cancel(job_id)
                text = (
                    f'Stopping "{record.name}": it saves what it has, then stops. Press Cancel again to stop at once.'
                    if record.status == "stopping"
                    else f'"{record.name}" was cancelled.'
                )
            elif action == "resume":
                manager.resume(job_id)
                text = f'"{record.name}" will continue from its last saved state.'
            elif action == "remove":
                what = "checkpoint" if self.service.job_outputs(job_id).full else "LoRA"
                manager.remove(job_id)
                text = f'"{record.name}" was removed from the list (its {what} files stay).'
            elif action in ("up", "down"):
                if record.position is None:
                    return _box("problems", ["Only waiting jobs can be moved."])
                manager.move(job_id, max(0, record.position + (-1 if action == "up" else 1)))
                text = f'"{record.name}" moved {action}.'
            else:
                raise ValueError(f"unknown action {action!r}")
        except JobError as exc:
            return _box("problems", [str(exc)])
        return _box("info", [text])

    # ------------------------------------------------------------ compare epochs

    def compare_fields(self, job_id: str | None) -> CompareFields:
        """The job's default grid (sample prompt or trigger word, saved epochs, 0.4-1) and its latest grid."""
        if not job_id:
            return CompareFields(message=_box("info", ["Pick a finished job to compare its epochs."]))
        try:
            request = self.service.compare_request(job_id)
            record = self.service.manager.get(job_id)
        except (JobError, CompareError) as exc:
            return CompareFields(message=_box("problems", [str(exc)]))
        latest = grids.latest_grid(record.job_dir)
        auto = grids.read_settings(record.job_dir).get("auto_compare") or {}
        message = ""
        if auto.get("status") == "failed":
            message = _box("problems", [f"The comparison after training failed: {auto.get('message', '')}"])
        elif auto.get("status") == "waiting":
            message = _box("info", ["The comparison grid is being made."])
        return CompareFields(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            epochs=request.epochs,
            strengths=request.strengths,
            seed=request.seed,
            grid=str(latest[0]) if latest else None,
            infotext=latest[1] if latest else "",
            message=message,
        )

    def compare(
        self, job_id: str | None, prompt: str, negative: str, epochs: str, strengths: str, seed: Any
    ) -> tuple[str | None, str, str]:
        """Run the grid with the user's edits over the job's defaults: (grid image path, infotext, message)."""
        if not job_id:
            return None, "", _box("problems", ["Pick a finished job first."])
        try:
            request = self.service.compare_request(job_id)
            edits = {"prompt": prompt, "negative_prompt": negative, "epochs": epochs, "strengths": strengths}
            request = replace(
                request,
                **{
                    k: str(v) for k, v in edits.items() if v is not None and (k != "prompt" or str(v).strip())
                },
                seed=int(seed) if seed not in (None, "") else request.seed,
            )
            done = self.service.compare(job_id, request)
        except (JobError, CompareError, ValueError) as exc:
            return None, "", _box("problems", [str(exc)])
        lines = [f"Grid saved: {done.path}", grids.describe(done.request), *done.notes]
        return str(done.path), done.infotext, _box("info", lines)

    def install_html(self) -> str:
        if self.install is None or self.install.ok:
            return ""
        return _box("problems", [self.install.message, self.install.fix])
