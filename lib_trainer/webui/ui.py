"""The "Train LoRA/DreamBooth" tab, built with the WebUI's own gradio (3.41 on A1111 and reForge, 4.40 on Forge).

Only wiring lives here: what each button does is in `tab_controller.py`. Rules that keep it running on both
gradio versions: gr.update() for updates, `_js=` on listeners (Forge translates it), no gr.Box or .style(),
and every handler returns quickly (jobs run in the trainer process; progress comes from a poll that the
browser script javascript/lora_trainer.js triggers with queue=False, so it never waits behind generation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from . import form_fields
from .handoff import AUTO, EXCLUSIVE, SHARED
from .tab_controller import CURRENT_LABEL, CompareFields, ModeView, TabController, TabValues

TAB_TITLE = "Train LoRA/DreamBooth"
TAB_ID = "lora_trainer"

# gradio 3.41 dropdowns take plain strings only (no (label, value) pairs): map the labels back ourselves.
GPU_MODE_LABELS = {
    "Automatic": AUTO,
    "Exclusive: pause image generation while training": EXCLUSIVE,
    "Shared: train next to image generation": SHARED,
}

QUIET = {"queue": False, "show_progress": "hidden"}  # polls must not wait in the queue or dim the tab

TOOLTIPS = {
    "dataset": "The folder with your training images. Captions are .txt files with the same name as the image. "
    "Subfolders named like 10_mychar repeat their images 10 times per epoch (kohya layout).",
    "name": "The file name of the LoRA (for a full fine-tune: of the new checkpoint). If the name is taken, the "
    "next free one (name_2, ...) is used.",
    "trigger": "A word the LoRA learns to respond to; it is saved as the LoRA's activation text.",
    "preset": "Ready-made settings for common cards. Picking one changes the Advanced settings.",
    "checkpoint": "The model to train on. By default the one loaded in the WebUI right now.",
    "compare_when_done": "When training has finished, make a grid of the saved epochs at strengths 0.4 to 1 with "
    "the WebUI's txt2img (shown under Compare epochs).",
    "compare_prompt": "The prompt for every cell. It must contain the LoRA's tag, e.g. <lora:mychar:1>; the grid "
    "switches that tag to each epoch's file and sets its strength.",
    "compare_epochs": "Which saved epochs to compare: numbers (1, 2, 5), ranges (1-10 (+2)) or final.",
    "compare_strengths": "LoRA strengths to compare, e.g. 0.4, 0.6, 0.8, 1.",
    "compare_seed": "One seed for every cell, so only the epoch and the strength change.",
    "gpu_mode": "Exclusive moves the WebUI's model out of VRAM and pauses generation until training ends. "
    "Shared trains next to generation and needs a GPU with room for both. Automatic picks for you.",
}


@dataclass
class TabComponents:
    """Handles on the built components, for tests and for other code that wires into the tab."""

    blocks: Any
    fields: dict[str, Any] = field(default_factory=dict)  # spec path -> component
    named: dict[str, Any] = field(default_factory=dict)  # short name -> component
    tooltips: dict[str, str] = field(default_factory=dict)  # elem_id -> tooltip given


def _field_component(spec: form_fields.FieldSpec, value: Any, visible: bool = True) -> Any:
    common = {"label": spec.label, "elem_id": spec.elem_id, "tooltip": spec.tooltip, "visible": visible}
    if spec.kind == "checkbox":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "radio":  # (shown label, spec value) pairs: the handlers get the spec value
        choices = list(zip(spec.choice_labels or spec.choices or (), spec.choices or (), strict=True))
        return gr.Radio(choices=choices, value=value, **common)
    if spec.kind == "dropdown":
        return gr.Dropdown(choices=list(spec.choices or ()), value=value, **common)
    if spec.kind == "slider":
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, value=value, **common)
    if spec.kind in ("int", "number"):
        kwargs = {"precision": 0} if spec.kind == "int" else {}
        if spec.minimum is not None:
            kwargs["minimum"] = spec.minimum
        if spec.maximum is not None:
            kwargs["maximum"] = spec.maximum
        if spec.nullable:  # gr.Number cannot be empty: nullable numbers are typed as text
            return gr.Textbox(
                value="" if value is None else str(value), placeholder=spec.placeholder, **common
            )
        return gr.Number(value=value, **kwargs, **common)
    lines = 4 if spec.kind == "textarea" else 1
    return gr.Textbox(
        value="" if value is None else str(value), lines=lines, placeholder=spec.placeholder, **common
    )


def _compare_inputs(named: Any) -> list[Any]:
    """Prompt, negative prompt, epochs, strengths, seed: the editable parts of a comparison grid."""
    prompt = named(
        "compare_prompt",
        gr.Textbox(
            label="Prompt", lines=2, elem_id="lora_trainer_compare_prompt", tooltip=TOOLTIPS["compare_prompt"]
        ),
    )
    negative = named(
        "compare_negative",
        gr.Textbox(label="Negative prompt", lines=1, elem_id="lora_trainer_compare_negative"),
    )
    with gr.Row():
        epochs = named(
            "compare_epochs",
            gr.Textbox(
                label="Epochs", elem_id="lora_trainer_compare_epochs", tooltip=TOOLTIPS["compare_epochs"]
            ),
        )
        strengths = named(
            "compare_strengths",
            gr.Textbox(
                label="Strengths",
                elem_id="lora_trainer_compare_strengths",
                tooltip=TOOLTIPS["compare_strengths"],
            ),
        )
        seed = named(
            "compare_seed",
            gr.Number(
                label="Seed",
                value=1,
                precision=0,
                elem_id="lora_trainer_compare_seed",
                tooltip=TOOLTIPS["compare_seed"],
            ),
        )
    return [prompt, negative, epochs, strengths, seed]


def _compare_updates(fields: CompareFields) -> tuple:
    return (
        fields.prompt,
        fields.negative_prompt,
        fields.epochs,
        fields.strengths,
        fields.seed,
        fields.grid,
        fields.infotext,
        fields.message,
    )


def _tab_id(group: str) -> str:
    """The id of an Advanced settings tab, so the training type switch can select it."""
    return "lora_trainer_tab_" + "".join(c if c.isalnum() else "_" for c in group.lower())


def _mode_updates(view: ModeView) -> tuple:
    """Class prompt, Compare epochs when done, name box, Advanced section, its tabs, message."""
    return (
        gr.update(visible=view.dreambooth),
        gr.update(visible=not view.full),
        gr.update(label=view.name_label),
        gr.update(open=True) if view.advanced_tab else gr.update(),
        gr.update(selected=_tab_id(view.advanced_tab)) if view.advanced_tab else gr.update(),
        view.note or gr.update(),
    )


def build_tab(controller: TabController) -> TabComponents:
    values = controller.initial_values()
    index = {spec.path: i for i, spec in enumerate(form_fields.FIELDS)}
    start_view = controller.mode_view(values[index["mode"]])
    out = TabComponents(blocks=None)

    def named(key: str, component: Any) -> Any:
        out.named[key] = component
        return component

    def field(path: str, visible: bool = True) -> Any:
        spec = form_fields.field_by_path(path)
        component = _field_component(spec, values[index[path]], visible)
        out.fields[path] = component
        out.tooltips[spec.elem_id] = spec.tooltip
        return component

    with gr.Blocks(analytics_enabled=False) as blocks:
        out.blocks = blocks
        named("install", gr.HTML(controller.install_html(), elem_id="lora_trainer_install"))
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Row():
                    checkpoint = named(
                        "checkpoint",
                        gr.Dropdown(
                            label="Base model",
                            choices=controller.checkpoint_choices(),
                            value=CURRENT_LABEL,
                            elem_id="lora_trainer_checkpoint",
                            tooltip=TOOLTIPS["checkpoint"],
                        ),
                    )
                    refresh_models = named(
                        "refresh_models", gr.Button("Refresh list", elem_id="lora_trainer_checkpoint_refresh")
                    )
                model_html = named("model", gr.HTML(controller.model_html(), elem_id="lora_trainer_model"))
                mode = field("mode")
                dataset = named(
                    "dataset",
                    gr.Textbox(
                        label="Dataset folder",
                        placeholder="e.g. C:\\training\\mychar or /home/me/datasets/mychar",
                        elem_id="lora_trainer_dataset",
                        tooltip=TOOLTIPS["dataset"],
                    ),
                )
                summary = named("summary", gr.HTML("", elem_id="lora_trainer_dataset_summary"))
                with gr.Row():
                    name = named(
                        "name",
                        gr.Textbox(
                            label=start_view.name_label, elem_id="lora_trainer_name", tooltip=TOOLTIPS["name"]
                        ),
                    )
                    trigger = named(
                        "trigger",
                        gr.Textbox(
                            label="Trigger word", elem_id="lora_trainer_trigger", tooltip=TOOLTIPS["trigger"]
                        ),
                    )
                class_prompt = field("dreambooth.class_prompt", visible=start_view.dreambooth)
                with gr.Row():
                    preset = named(
                        "preset",
                        gr.Dropdown(
                            label="Preset",
                            choices=controller.preset_titles(),
                            value=controller.default_preset() or None,
                            elem_id="lora_trainer_preset",
                            tooltip=TOOLTIPS["preset"],
                        ),
                    )
                    gpu_mode = named(
                        "gpu_mode",
                        gr.Dropdown(
                            label="GPU sharing",
                            choices=list(GPU_MODE_LABELS),
                            value="Automatic",
                            elem_id="lora_trainer_gpu_mode",
                            tooltip=TOOLTIPS["gpu_mode"],
                        ),
                    )
                with gr.Row():
                    start = named(
                        "start", gr.Button("Start training", variant="primary", elem_id="lora_trainer_start")
                    )
                    compare_when_done = named(
                        "compare_when_done",
                        gr.Checkbox(
                            label="Compare epochs when done",
                            value=False,
                            visible=not start_view.full,
                            elem_id="lora_trainer_compare_when_done",
                            tooltip=TOOLTIPS["compare_when_done"],
                        ),
                    )
                message = named("message", gr.HTML("", elem_id="lora_trainer_message"))
                with gr.Accordion(
                    "Advanced settings", open=False, elem_id="lora_trainer_advanced"
                ) as advanced:
                    named("advanced", advanced)
                    with gr.Tabs(elem_id="lora_trainer_advanced_tabs") as advanced_tabs:
                        named("advanced_tabs", advanced_tabs)
                        for group, specs in form_fields.groups():
                            with gr.Tab(group, id=_tab_id(group)):
                                for spec in specs:
                                    field(spec.path)
                    with gr.Row():
                        preset_title = named(
                            "preset_title",
                            gr.Textbox(
                                label="Save these settings as preset", elem_id="lora_trainer_preset_title"
                            ),
                        )
                        save_preset = named(
                            "save_preset", gr.Button("Save preset", elem_id="lora_trainer_preset_save")
                        )
                        delete_preset = named(
                            "delete_preset",
                            gr.Button("Delete selected preset", elem_id="lora_trainer_preset_delete"),
                        )
            with gr.Column(scale=6):
                with gr.Row():
                    job = named(
                        "job", gr.Dropdown(label="Job", choices=[], value=None, elem_id="lora_trainer_job")
                    )
                    poll = named("poll", gr.Button("Refresh", elem_id="lora_trainer_poll"))
                progress = named(
                    "progress", gr.HTML(controller.poll().progress_html, elem_id="lora_trainer_progress")
                )
                loss = named("loss", gr.HTML("", elem_id="lora_trainer_loss"))
                with gr.Row():
                    cancel = named(
                        "cancel", gr.Button("Cancel", variant="stop", elem_id="lora_trainer_cancel")
                    )
                    resume = named("resume", gr.Button("Resume", elem_id="lora_trainer_resume"))
                    remove = named("remove", gr.Button("Remove from list", elem_id="lora_trainer_remove"))
                    up = named("up", gr.Button("Move up in queue", elem_id="lora_trainer_move_up"))
                    down = named("down", gr.Button("Move down in queue", elem_id="lora_trainer_move_down"))
                gallery = named(
                    "gallery",
                    gr.Gallery(
                        label="Latest samples", columns=4, height="auto", elem_id="lora_trainer_gallery"
                    ),
                )
                log_html = named("log", gr.HTML("", elem_id="lora_trainer_log"))
                with gr.Accordion("Compare epochs", open=False, elem_id="lora_trainer_compare_panel"):
                    compare_inputs = _compare_inputs(named)
                    with gr.Row():
                        compare = named(
                            "compare",
                            gr.Button(
                                "Make comparison grid", variant="primary", elem_id="lora_trainer_compare"
                            ),
                        )
                        compare_reset = named(
                            "compare_reset",
                            gr.Button("Reset to job defaults", elem_id="lora_trainer_compare_reset"),
                        )
                    compare_message = named(
                        "compare_message", gr.HTML("", elem_id="lora_trainer_compare_message")
                    )
                    compare_grid = named(
                        "compare_grid",
                        gr.Image(
                            label="Epoch x strength grid",
                            type="filepath",
                            interactive=False,
                            elem_id="lora_trainer_compare_grid",
                        ),
                    )
                    compare_infotext = named(
                        "compare_infotext",
                        gr.Textbox(
                            label="Grid parameters (paste into txt2img, or drop the image into PNG Info)",
                            lines=3,
                            interactive=False,
                            elem_id="lora_trainer_compare_infotext",
                        ),
                    )
                with gr.Accordion("Queue and finished jobs", open=True):
                    queue_html = named("queue", gr.HTML("", elem_id="lora_trainer_queue"))
                    history_html = named("history", gr.HTML("", elem_id="lora_trainer_history"))
        gallery_sig = gr.State(None)

        field_components = [out.fields[spec.path] for spec in form_fields.FIELDS]
        tab_inputs = [dataset, name, trigger, preset, checkpoint, gpu_mode, compare_when_done]

        def tab_values(args: tuple) -> tuple[TabValues, list[Any]]:
            n = len(tab_inputs)
            tab = TabValues(*[("" if v is None else v) for v in args[:n]])
            tab.compare_when_done = bool(tab.compare_when_done)
            tab.gpu_mode = GPU_MODE_LABELS.get(tab.gpu_mode, AUTO)
            return tab, list(args[n:])

        def on_poll(selected: str | None, checkpoint_value: str, last_sig: Any):
            view = controller.poll(selected)
            sig = tuple(view.gallery)
            gallery_update = gr.update() if sig == last_sig else gr.update(value=list(view.gallery))
            return (
                gr.update(choices=view.job_choices, value=view.selected),
                view.progress_html,
                view.loss_svg,
                gallery_update,
                view.log_html,
                view.queue_html,
                view.history_html,
                controller.model_html(checkpoint_value),
                sig,
            )

        poll_outputs = [
            job,
            progress,
            loss,
            gallery,
            log_html,
            queue_html,
            history_html,
            model_html,
            gallery_sig,
        ]
        poll.click(on_poll, inputs=[job, checkpoint, gallery_sig], outputs=poll_outputs, **QUIET)

        def on_dataset(*args):
            tab, adv = tab_values(args)
            return controller.dataset_html(tab, adv)

        for event in (dataset.blur, dataset.submit, trigger.blur):
            event(on_dataset, inputs=tab_inputs + field_components, outputs=[summary], queue=False)

        name.blur(
            controller.name_hint,
            inputs=[name, mode, out.fields["finetune.extract_lora_rank"]],
            outputs=[message],
            queue=False,
        )

        def on_mode(mode_value: str):
            return _mode_updates(controller.mode_view(mode_value))

        mode.change(
            on_mode,
            inputs=[mode],
            outputs=[class_prompt, compare_when_done, name, advanced, advanced_tabs, message],
            queue=False,
        )
        checkpoint.change(controller.model_html, inputs=[checkpoint], outputs=[model_html], queue=False)
        refresh_models.click(
            lambda: gr.update(choices=controller.checkpoint_choices()), outputs=[checkpoint], queue=False
        )

        def on_preset(title: str, *adv):
            new_values, note = controller.apply_preset(title, list(adv))
            return (*new_values, note)

        preset.change(
            on_preset, inputs=[preset, *field_components], outputs=[*field_components, message], queue=False
        ).then(on_dataset, inputs=tab_inputs + field_components, outputs=[summary], queue=False)

        def on_save(title: str, *adv):
            note, titles = controller.save_preset(title, list(adv))
            return note, gr.update(choices=titles, value=title if title in titles else None)

        save_preset.click(
            on_save, inputs=[preset_title, *field_components], outputs=[message, preset], queue=False
        )

        def on_delete(title: str):
            note, titles = controller.delete_preset(title)
            return note, gr.update(choices=titles, value=controller.default_preset() or None)

        delete_preset.click(on_delete, inputs=[preset], outputs=[message, preset], queue=False)

        def on_start(*args):
            tab, adv = tab_values(args)
            note, job_id = controller.start(tab, adv)
            return note, gr.update(value=job_id) if job_id else gr.update()

        start.click(on_start, inputs=tab_inputs + field_components, outputs=[message, job], queue=False).then(
            on_poll, inputs=[job, checkpoint, gallery_sig], outputs=poll_outputs, **QUIET
        )
        job.select(on_poll, inputs=[job, checkpoint, gallery_sig], outputs=poll_outputs, **QUIET).then(
            lambda job_id: _compare_updates(controller.compare_fields(job_id)),
            inputs=[job],
            outputs=[*compare_inputs, compare_grid, compare_infotext, compare_message],
            queue=False,
        )
        compare_reset.click(
            lambda job_id: _compare_updates(controller.compare_fields(job_id)),
            inputs=[job],
            outputs=[*compare_inputs, compare_grid, compare_infotext, compare_message],
            queue=False,
        )
        # Queued like txt2img (it is a generation); the tab's poll keeps running beside it.
        compare.click(
            controller.compare,
            inputs=[job, *compare_inputs],
            outputs=[compare_grid, compare_infotext, compare_message],
        )
        for button, action in (
            (cancel, "cancel"),
            (resume, "resume"),
            (remove, "remove"),
            (up, "up"),
            (down, "down"),
        ):
            button.click(
                lambda job_id, _a=action: controller.act(_a, job_id),
                inputs=[job],
                outputs=[message],
                queue=False,
            ).then(on_poll, inputs=[job, checkpoint, gallery_sig], outputs=poll_outputs, **QUIET)
    return out
