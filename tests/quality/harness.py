"""Train, sample and judge on the toy world: the steps the quality tests and the docs table share.

Training goes through the trainer's own job runner with the job spec's defaults, changed only where the toy
world needs it (64 px pictures on the CPU in fp32, no samples), plus the settings a test names: the Train
tab's default preset (`tab_default_preset`) for the quality tests' subject jobs, an option for a table
variant. Pictures are drawn through the trainer's own sampling path (`lib_trainer.train.sampling`) and a LoRA
is judged as it comes back from its exported kohya file, merged with the WebUI's formula (`kohya_merge`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib_trainer.export.bundled_embedding import is_bundle_key
from lib_trainer.models.loader import BaseModel, load_base_model
from lib_trainer.spec import spec_from_dict
from lib_trainer.train.events import read_events
from lib_trainer.train.job import run_job
from lib_trainer.train.noise import make_noise_scheduler
from lib_trainer.train.sampling import build_pipeline, text_inputs
from lib_trainer.train.trigger_embedding import load_bundled
from lib_trainer.webui.presets import BUILTIN_DIR, PresetStore, default_builtin, fragment_from_spec

from . import toyworld as tw
from .judge import Judge, Verdict
from .kohya_merge import merged_base_model
from .toy_model import IMAGE_SIZE, TOY_MODEL_FILE

SAMPLER = "euler_a"
"""The spec's default sampler; steps and CFG below are the spec's sample defaults too."""
SAMPLE_STEPS = 20
CFG_SCALE = 7.0

SUBJECT_REPEATS = 10
"""kohya folder repeats for the ~8-picture datasets, as users set them (`10_ohwx shape`)."""

DRIFT_SHAPES: tuple[str, ...] = tw.KNOWN_SHAPES
PROBE_COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow")
PROBE_BACKGROUNDS: tuple[str, ...] = ("white", "grey")


PRESET_HARDWARE_FIELDS: dict[str, tuple[str, ...]] = {
    "training": ("epochs", "resolution", "mixed_precision", "gradient_checkpointing"),
    "dataset": ("cache_latents",),
}
"""What a built-in preset sizes for a GPU and a 512 px picture, not how the LoRA learns (and the epochs, which
each toy job sets for its own data): left to `toy_spec`, whose 64 px CPU fp32 settings stand for them."""
CPU_OPTIMIZERS = {"AdamW8bit": "AdamW"}
"""bitsandbytes' 8-bit AdamW runs on CUDA only; on the CPU the toy jobs take AdamW, the same update with its
moments kept in 32 bits instead of 8."""


def tab_default_preset() -> dict[str, dict]:
    """The learning settings of the preset a fresh Train tab applies to an SD1.5 model (the built-in that
    `presets.default_builtin` picks: rank, text encoder on or off and its rate, optimizer, schedule, min-SNR),
    as spec sections for `toy_spec`. Read from the preset file itself, so a change to the product's default
    is what the quality tests train with."""
    store = PresetStore(BUILTIN_DIR / "no-user-presets")
    preset = default_builtin(store.list(), sdxl=False)
    if preset is None:
        raise AssertionError(f"no built-in preset in {BUILTIN_DIR}")
    sections = fragment_from_spec(preset.spec)
    sections.pop("mode", None)
    for section, fields in PRESET_HARDWARE_FIELDS.items():
        for field in fields:
            sections.get(section, {}).pop(field, None)
    training = sections.get("training", {})
    if training.get("optimizer") in CPU_OPTIMIZERS:
        training["optimizer"] = CPU_OPTIMIZERS[training["optimizer"]]
    return {name: values for name, values in sections.items() if values}


def merge_sections(*fragments: dict[str, dict]) -> dict[str, dict]:
    """Spec sections merged field by field, later fragments winning."""
    out: dict[str, dict] = {}
    for fragment in fragments:
        for section, values in fragment.items():
            out.setdefault(section, {}).update(copy.deepcopy(values))
    return out


def toy_spec(data_dir: Path, out_dir: Path, name: str, mode: str = "lora", **sections: dict) -> dict:
    """The job spec's defaults plus the toy world's necessities; `sections` override or add fields (a preset
    from `tab_default_preset`, a table variant's options)."""
    spec: dict = {
        "spec_version": 1,
        "name": name,
        "mode": mode,
        "model": {"checkpoint": str(TOY_MODEL_FILE)},
        "dataset": {
            "path": str(data_dir),
            "cache_latents": "memory",
            "min_bucket_reso": IMAGE_SIZE,
            "max_bucket_reso": IMAGE_SIZE,
        },
        "training": {"resolution": IMAGE_SIZE, "device": "cpu", "mixed_precision": "no"},
        "output": {"dir": str(out_dir)},
        "samples": {"every_epochs": 0, "prompts": []},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(copy.deepcopy(values))
    return spec


@dataclass
class TrainedLora:
    final: Path
    saved: list[tuple[int, int, Path]]
    """(epoch, global step, file) for every LoRA file the job wrote, in order; the final file holds the
    last epoch (kohya writes no separate file for it)."""
    events: list[dict]
    job_dir: Path

    @property
    def train_seconds(self) -> float:
        """From the job's start event to its end (the trainer process's own clock, loading included)."""
        times = [e["time"] for e in self.events if e.get("type") in ("start", "done")]
        return times[-1] - times[0]


def train(spec: dict, job_dir: Path) -> TrainedLora:
    """Run one job to the end in this process; fail with the trainer's own error events if it does not
    finish (training_pool.TrainingPool runs jobs in trainer processes, side by side)."""
    return trained_lora(spec["name"], run_job(spec_from_dict(spec), job_dir), job_dir)


def trained_lora(name: str, code: int, job_dir: Path) -> TrainedLora:
    """The files a finished job wrote, from its event stream; an AssertionError naming its errors (and the
    end of its process log, where a crashed trainer left its last words) if it did not finish."""
    events_file = job_dir / "events.jsonl"
    events = read_events(events_file) if events_file.is_file() else []
    if code != 0:
        errors = [e for e in events if e.get("type") == "error"]
        log = job_dir / "process.log"
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.is_file() else ""
        raise AssertionError(f"training {name} failed ({code}): {errors}\n{tail}")
    saved = [(e["epoch"], e["step"], Path(e["path"])) for e in events if e.get("type") == "checkpoint"]
    return TrainedLora(saved[-1][2], saved, events, job_dir)


def _ready(base: BaseModel) -> BaseModel:
    for module in (base.unet, base.vae, *base.text_encoders):
        module.float().eval()
    return base


def load_toy_base() -> BaseModel:
    return _ready(load_base_model(TOY_MODEL_FILE))


def with_lora(lora_file: Path | None, strength: float = 1.0) -> BaseModel:
    """A fresh toy base with the file's LoRA merged in, as the WebUI applies it (a bundled trigger embedding
    included: the WebUI uses it whatever the strength); None: the base alone."""
    if lora_file is None:
        return load_toy_base()
    tensors = load_file(str(lora_file))
    lora = {k: v for k, v in tensors.items() if not is_bundle_key(k)}
    base, unmatched = merged_base_model(TOY_MODEL_FILE, lora, strength)
    if unmatched:
        raise AssertionError(f"{lora_file.name}: modules the WebUI would not find: {sorted(unmatched)[:5]}")
    load_bundled(base, tensors)
    return _ready(base)


@torch.no_grad()
def draw_many(base: BaseModel, prompts: Sequence[str], seeds: Sequence[int], negative: str = "") -> list:
    """One picture per prompt and seed (prompt-major) through the trainer's sampling path (its pipeline and its
    text encoding), all in one batch: the toy model's 8x8 latents keep a core busy only in large batches.
    Each picture has its own seeded generator, so it is the picture drawn alone for that prompt and seed."""
    pipe = build_pipeline(base, SAMPLER, make_noise_scheduler(base.arch.prediction_type))
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(int(s)) for _ in prompts for s in seeds]
    per_prompt = [text_inputs(base, p, negative, len(seeds), 1, torch.device("cpu")) for p in prompts]
    inputs = {key: torch.cat([ti[key] for ti in per_prompt]) for key in per_prompt[0]}
    return pipe(
        **inputs,
        width=IMAGE_SIZE,
        height=IMAGE_SIZE,
        guidance_scale=CFG_SCALE,
        num_inference_steps=SAMPLE_STEPS,
        generator=generators,
    ).images


@dataclass(frozen=True)
class Probe:
    """A prompt and what a correct picture for it shows (None: not checked)."""

    prompt: str
    shape: str | None = None
    colour: str | None = None
    striped: bool | None = None

    def correct(self, v: Verdict) -> bool:
        return (
            (self.shape is None or v.shape == self.shape)
            and (self.colour is None or v.colour == self.colour)
            and (self.striped is None or v.striped == self.striped)
        )


def probe_sentence(colour: str, shape_words: str, background: str, style: bool = False) -> str:
    text = f"a {colour} {shape_words} on a {background} background"
    return f"{text}, in {tw.STYLE_PHRASE}" if style else text


Draw = Callable[[Sequence[str], Sequence[int]], list]
"""Pictures for prompts x seeds, prompt-major, drawn by something other than the trainer's sampling path (the
real WebUI in tests/test_host_toy_model.py)."""


def judged(
    base: BaseModel | Draw, judge: Judge, probes: Sequence[Probe], seeds: Sequence[int]
) -> list[list[Verdict]]:
    prompts = [p.prompt for p in probes]
    pictures = base(prompts, seeds) if callable(base) else draw_many(base, prompts, seeds)
    verdicts = judge.predict(pictures)
    return [verdicts[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(probes))]


def rate(verdicts: list[list[Verdict]], test: Callable[[int, Verdict], bool]) -> float:
    """Share of all pictures (probe index, verdict) that pass `test`."""
    hits = [test(i, v) for i, row in enumerate(verdicts) for v in row]
    return sum(hits) / max(1, len(hits))


# --- the probe sets ---------------------------------------------------------------------------------------


def base_probes() -> list[Probe]:
    """Every known shape in four colours on two backgrounds: what the base model must draw."""
    return [
        Probe(probe_sentence(c, s, bg), shape=s, colour=c)
        for s in tw.KNOWN_SHAPES
        for c in PROBE_COLOURS
        for bg in PROBE_BACKGROUNDS
    ]


def subject_probes(with_trigger: bool) -> list[Probe]:
    """'a red ohwx shape ...' (the subject, in the prompted colour) or the bare class 'a red shape ...'."""
    words = f"{tw.SUBJECT_TOKEN} {tw.SUBJECT_CLASS}" if with_trigger else tw.SUBJECT_CLASS
    shape = tw.SUBJECT_SHAPE if with_trigger else None
    return [
        Probe(probe_sentence(c, words, bg), shape=shape, colour=c)
        for c in PROBE_COLOURS
        for bg in PROBE_BACKGROUNDS
    ]


def style_probes(with_trigger: bool, shapes: Sequence[str]) -> list[Probe]:
    return [
        Probe(probe_sentence(c, s, "white", style=with_trigger), shape=s, colour=c, striped=with_trigger)
        for s in shapes
        for c in PROBE_COLOURS
    ]
