"""The form of the Train LoRA/DreamBooth tab as data: one `FieldSpec` per job-spec field, grouped. The
groups are the Advanced section's tabs; the MAIN_VIEW rows (the training type, the class prompt) are shown
in the tab's main view instead, still one component per field.

Pure data: no gradio, no torch. Choice lists come from the spec schema, so a new optimizer or sampler shows
up here by itself; a new spec field makes tests/webui/test_form_fields.py fail until it gets a row in the
table below (or is listed in TAB_FIELDS). Labels, tooltips and placeholders are fixed strings (they get
translated). `form_fields` turns spec dicts into component values and back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..spec import schema

GROUPS: tuple[str, ...] = (
    "Model",
    "Captions",
    "Images & buckets",
    "Network",
    "Training",
    "Optimizer & schedule",
    "Speed & memory",
    "Saving",
    "Samples",
    "DreamBooth",
    "Full fine-tune",
)
KINDS = ("text", "textarea", "number", "int", "slider", "checkbox", "dropdown", "radio")
AUTO = "auto"  # the dropdown entry of a nullable choice field that stands for null (detect / automatic)

# Set by the tab's own inputs (or by the WebUI service), never by the Advanced section.
TAB_FIELDS: frozenset[str] = frozenset(
    {
        "spec_version",
        "name",
        "dataset.path",
        "dataset.trigger_word",
        "model.checkpoint",
        "output.dir",
        "output.family_folder",  # on for LoRAs (a folder per LoRA); off for checkpoints (the WebUI's list is flat)
        "finetune.lora_dir",  # the WebUI's LoRA folder, for the LoRA extracted from a full fine-tune
    }
)

# Rows shown in the tab's main view instead of the Advanced section: the training type, and the class prompt
# that the DreamBooth types need (shown only for them). Each field still has exactly one component.
MAIN_VIEW: tuple[str, ...] = ("mode", "dreambooth.class_prompt")

# Worth showing next to the tab's own inputs ("Common settings").
BASIC_PATHS: tuple[str, ...] = (
    "training.epochs",
    "training.batch_size",
    "training.resolution",
    "network.rank",
    "training.learning_rate",
)


@dataclass(frozen=True)
class FieldSpec:
    """One component of the form. `nullable`: an empty box (or "auto" in a dropdown) means null, i.e.
    automatic; int sliders have an int `step`, float sliders a float one. `choice_labels` (radio only) are
    the words shown for `choices`, which stay the values the spec gets."""

    path: str
    label: str
    kind: str
    group: str
    tooltip: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    step: int | float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    elem_id: str = ""
    placeholder: str = ""
    choice_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.elem_id:
            object.__setattr__(self, "elem_id", "lora_trainer_" + self.path.replace(".", "_"))


def _f(path: str, kind: str, label: str, tooltip: str, **kw: Any) -> FieldSpec:
    return FieldSpec(path=path, label=label, kind=kind, group="", tooltip=tooltip, **kw)


def _auto(options: tuple[str, ...]) -> tuple[str, ...]:
    return (AUTO, *options)


_MAX_SEED = 2**32 - 1
_TABLE: dict[str, tuple[FieldSpec, ...]] = {
    "Model": (
        _f("mode", "radio", "Training type",
           "LoRA: a small add-on file for the WebUI's Lora list that teaches your subject or style; use it "
           "with <lora:name:1> in the prompt. DreamBooth LoRA: a LoRA that also keeps the rest of your "
           "subject's class as the model drew it (say what the subject is in Class prompt; class images "
           "are made first). DreamBooth (full fine-tune): trains the whole model and saves a new checkpoint "
           "in the WebUI's checkpoint list; it needs much more VRAM (about 14 GB for SD 1.5, 40 GB for "
           "SDXL), disk space (each checkpoint is as big as the base model) and a learning rate near 1e-6.",
           choices=schema.AVAILABLE_MODES,
           choice_labels=("LoRA", "DreamBooth LoRA", "DreamBooth (full fine-tune, saves a checkpoint)")),
        _f("model.vae", "text", "VAE",
           'The VAE turns images into the compact form the model learns from. "current" (or empty): the VAE '
           'selected in the WebUI; "none": the VAE inside the checkpoint; or the path of a VAE file.',
           placeholder="current, none, or the path of a VAE file"),
        _f("model.model_type", "dropdown", "Model type",
           "The model family: sd1 = SD 1.x, sd2 = SD 2.x, sd2-v = SD 2.x 768-v (v-prediction), sdxl = SDXL. "
           "Leave it on auto: the trainer detects it from the file.",
           choices=_auto(schema.MODEL_TYPES), nullable=True),
        _f("model.prediction_type", "dropdown", "Prediction type",
           "What the model was trained to predict: epsilon (most models) or v_prediction (SD 2.x 768-v "
           "models and some others). Leave it on auto to detect it.",
           choices=_auto(schema.PREDICTION_TYPES), nullable=True),
        _f("model.clip_skip", "slider", "CLIP skip",
           "Use the output of an earlier layer of the text encoder, like the WebUI's Clip skip setting. "
           "1 is usual, 2 is common for anime models; SD 1.x and 2.x only (keep 1 for SDXL).",
           minimum=1, maximum=12, step=1),
    ),
    "Captions": (
        _f("dataset.caption_extension", "text", "Caption file extension",
           "File ending of the caption files next to the images (img1.png + img1.txt). Usually .txt.",
           placeholder=".txt"),
        _f("dataset.prepend_trigger_word", "checkbox", "Put the trigger word first in every caption",
           "Adds the trigger word at the start of every caption. Needs a trigger word."),
        _f("dataset.shuffle_captions", "checkbox", "Shuffle caption tags",
           "Shuffles the comma-separated tags of a caption each time it is used, so the LoRA does not "
           "depend on tag order. Often on for tag lists, off for sentences."),
        _f("dataset.keep_tokens", "int", "Tags kept in front when shuffling",
           "With shuffling on, this many tags at the start of the caption stay in place (1 keeps the "
           "trigger word first). Usually 0 or 1.",
           minimum=0, maximum=255, step=1),
        _f("dataset.caption_dropout", "slider", "Caption dropout rate",
           "Chance of training an image with an empty caption: 0.05 = 5% of the time. Usually 0.",
           minimum=0.0, maximum=1.0, step=0.01),
    ),
    "Images & buckets": (
        _f("dataset.flip_aug", "checkbox", "Also train on mirrored images",
           "Adds left-right mirrored copies of the images. Leave it off for subjects that must not flip, "
           "such as text or one-sided designs."),
        _f("dataset.enable_bucket", "checkbox", "Aspect-ratio buckets",
           "Sorts images of similar shape into groups (buckets) that are trained at their own width and "
           "height, so images are not cropped square. Usually on."),
        _f("dataset.min_bucket_reso", "int", "Smallest bucket side (pixels)",
           "No bucket is narrower or lower than this. A multiple of 8; usually 256.",
           minimum=64, maximum=4096, step=8),
        _f("dataset.max_bucket_reso", "int", "Largest bucket side (pixels)",
           "No bucket is wider or taller than this. A multiple of 8. Empty = automatic: 1024 for SD 1.x "
           "and 2.x, 2048 for SDXL.",
           minimum=64, maximum=8192, step=8, nullable=True, placeholder="empty = automatic"),
        _f("dataset.bucket_reso_steps", "int", "Bucket size step (pixels)",
           "Bucket widths and heights are multiples of this. Empty = automatic: 64 for SD 1.x and 2.x, "
           "32 for SDXL.",
           minimum=8, maximum=512, step=8, nullable=True, placeholder="empty = automatic"),
        _f("dataset.bucket_no_upscale", "checkbox", "Never enlarge small images",
           "Images smaller than the training resolution go into a smaller bucket instead of being "
           "enlarged. Usually off."),
    ),
    "Network": (
        _f("network.rank", "int", "Network rank (dim)",
           "The size of the LoRA (called dim in other trainers). Bigger learns more detail but makes a "
           "bigger file and overfits sooner; 8 to 32 is usual. Not used by the full fine-tune.",
           minimum=1, maximum=1024, step=1),
        _f("network.alpha", "number", "Network alpha",
           "Scales the LoRA while it trains: its strength is alpha divided by rank, so a lower alpha "
           "learns more gently. Usually half the rank; empty = same as the rank. Not used by the full "
           "fine-tune.",
           minimum=0.01, maximum=None, nullable=True, placeholder="empty = same as the rank"),
        _f("network.train_unet", "checkbox", "Train the image model (UNet)",
           "Trains the part of the model that draws the image. Usually on."),
        _f("network.train_text_encoder", "checkbox", "Train the text encoder",
           "Also trains the part of the model that reads the prompt; needs more VRAM. Usually off."),
        _f("network.dropout", "number", "Network dropout",
           "Randomly leaves out part of the LoRA at each step, which can reduce overfitting. Usually 0 "
           "(0.1 when used); must be below 1.",
           minimum=0.0, maximum=0.99),
        _f("network.learn_trigger", "checkbox", "Learn the trigger word",
           "Also learns what the trigger word itself means (a textual-inversion embedding) and saves it "
           "inside the LoRA file. In our tests it made the trigger word bring the subject more reliably, "
           "and together with the prior \"trigger-off\" it also keeps the subject away from the plain class "
           "word. AUTOMATIC1111 uses it whenever the LoRA is in the prompt; Forge and reForge ignore it, and "
           "there such a LoRA works a little worse than one trained without it. Needs a trigger word that "
           "your captions use. Only for LoRAs (not the full fine-tune)."),
        _f("network.trigger_vectors", "int", "Trigger word vectors",
           "How many token slots the learnt trigger word takes in the prompt (of the 75). More can hold "
           "more detail; 1 or 2 is usual.",
           minimum=1, maximum=16, step=1),
        _f("network.trigger_init", "text", "Start the trigger word from",
           "A word or two close to your subject (e.g. \"dog\") for the learnt trigger word to start from. "
           "Empty = the trigger word itself.",
           placeholder="empty = the trigger word"),
        _f("network.trigger_step_scale", "number", "Trigger word step scale",
           "How much faster the trigger word learns than the LoRA (a multiplier on the optimizer's step). "
           "30 by default; lower it if samples turn into noise early.",
           minimum=0.01, maximum=1000),
        _f("network.trigger_train_fraction", "number", "Train the trigger word for",
           "The share of the training steps in which the trigger word learns (1 = all of them, 0.5 = the "
           "first half); the LoRA goes on learning after that.",
           minimum=0.01, maximum=1.0),
    ),
    "Training": (
        _f("training.epochs", "int", "Epochs",
           "How many times training goes through all images (each repeated as often as its folder says, "
           "e.g. 10_mychar = 10 times). Usually 10.",
           minimum=1, step=1),
        _f("training.max_steps", "int", "Stop after this many steps",
           "Ends training after this many steps, even if not all epochs are done. Empty = no limit "
           "(Epochs decides).",
           minimum=1, step=1, nullable=True, placeholder="empty = no limit"),
        _f("training.batch_size", "slider", "Batch size",
           "Images trained together in one step. Larger is faster per image but needs more VRAM; "
           "usually 1 or 2.",
           minimum=1, maximum=64, step=1),
        _f("training.resolution", "text", "Training resolution",
           "Training size in pixels: one number for a square (512 for SD 1.x, 768 for SD 2.x 768 models, "
           "1024 for SDXL) or width x height like 768x512. Multiples of 8.",
           placeholder="512, or width x height like 768x512"),
        _f("training.seed", "int", "Seed",
           "Random seed: the same seed and settings give the same LoRA. Any number; usually 42.",
           minimum=0, maximum=_MAX_SEED, step=1),
        _f("training.noise_offset", "number", "Noise offset",
           "Adds a little noise to the overall brightness while training, so the LoRA can also make very "
           "dark and very bright images. 0 = off; 0.05 to 0.1 when used.",
           minimum=0.0, maximum=1.0),
        _f("training.min_snr_gamma", "number", "Min SNR gamma",
           "Min SNR weighting: gives less weight to the training steps with very little noise, which often "
           "makes training faster and more even. 5 is typical; empty = off.",
           minimum=0.1, maximum=None, nullable=True, placeholder="empty = off"),
        _f("training.max_grad_norm", "number", "Gradient clipping (max norm)",
           "Limits how large a single learning step can get, which stops sudden jumps. Usually 1; "
           "0 turns it off.",
           minimum=0.0),
    ),
    "Optimizer & schedule": (
        _f("training.learning_rate", "number", "Learning rate",
           "How big each learning step is: too high burns the image, too low learns nothing. 0.0001 "
           "(1e-4) is usual for a LoRA, 0.000002 (2e-6) for a full fine-tune; use 1 with Prodigy.",
           minimum=1e-8, maximum=None),
        _f("training.text_encoder_lr", "number", "Text encoder learning rate",
           "Learning rate of the text encoder when it is trained; often half the learning rate. "
           "Empty = the same as Learning rate.",
           minimum=1e-8, maximum=None, nullable=True, placeholder="empty = same as Learning rate"),
        _f("training.optimizer", "dropdown", "Optimizer",
           "The method that updates the LoRA. AdamW is usual; AdamW8bit needs less VRAM (NVIDIA only); "
           "Prodigy sets its own pace (set Learning rate to 1); Adafactor uses little memory.",
           choices=schema.OPTIMIZERS),
        _f("training.optimizer_args", "text", "Extra optimizer settings (JSON)",
           'Extra settings for the optimizer in JSON, e.g. {"weight_decay": 0.01, "betas": [0.9, 0.99]}. '
           "Empty = none; the learning rate is set above, not here.",
           placeholder='e.g. {"weight_decay": 0.01}'),
        _f("training.lr_scheduler", "dropdown", "Learning rate schedule",
           "How the learning rate changes during training: cosine lowers it smoothly towards 0 (usual), "
           "constant keeps it the same.",
           choices=schema.LR_SCHEDULERS),
        _f("training.lr_warmup_steps", "number", "Warm-up",
           "Raises the learning rate slowly at the start. A whole number is a step count (100 = the first "
           "100 steps); a number below 1 is a share of all steps (0.05 = the first 5%). Usually 0.",
           minimum=0),
        _f("training.lr_scheduler_num_cycles", "int", "Restarts (cosine with restarts)",
           "For the cosine_with_restarts schedule only: how many times the learning rate falls and starts "
           "again. Usually 1.",
           minimum=1, maximum=1000, step=1),
        _f("training.lr_scheduler_power", "number", "Curve power (polynomial)",
           "For the polynomial schedule only: the shape of the fall of the learning rate; 1 is a straight "
           "line. Usually 1.",
           minimum=0.01, maximum=None),
    ),
    "Speed & memory": (
        _f("training.mixed_precision", "dropdown", "Mixed precision",
           "A faster number format that needs less VRAM. bf16 needs an RTX 30xx or newer; use fp16 on "
           "older cards and no for full 32-bit (slow).",
           choices=schema.MIXED_PRECISIONS),
        _f("training.gradient_accumulation_steps", "int", "Gradient accumulation steps",
           "Adds up this many batches before each learning step: like a bigger batch size without needing "
           "more VRAM. Usually 1.",
           minimum=1, maximum=1024, step=1),
        _f("training.gradient_checkpointing", "checkbox", "Gradient checkpointing",
           "Uses much less VRAM, but each step is slower. Turn it on if training runs out of VRAM."),
        _f("training.attention", "dropdown", "Attention",
           "How the model's attention layers are computed. sdpa is built into PyTorch and usual; xformers "
           "needs xformers installed.",
           choices=schema.ATTENTIONS),
        _f("training.device", "text", "Device",
           "Where to train: auto uses the GPU if there is one; cpu, cuda, or cuda:1 for the second GPU. "
           "Usually auto.",
           placeholder="auto, cpu, cuda or cuda:1"),
        _f("dataset.cache_latents", "dropdown", "Cache encoded images",
           "Encodes every image once into the compact form the model learns from (latents) and reuses it: "
           "disk keeps it for later runs, memory for this run only, off encodes at every step (slow).",
           choices=schema.CACHE_MODES),
        _f("dataset.cache_dir", "text", "Cache folder",
           "Where disk caching saves the encoded images. Empty = a hidden .lora-trainer-cache folder "
           "inside the dataset folder.",
           nullable=True, placeholder="empty = inside the dataset folder"),
    ),
    "Saving": (
        _f("output.save_every_epochs", "int", "Save every N epochs",
           "Also saves an in-between LoRA (or checkpoint) every N epochs, so you can pick an earlier one if "
           "the last is overtrained. 0 = only the final file. Each checkpoint of a full fine-tune is as big "
           "as the base model: save those less often.",
           minimum=0, step=1),
        _f("output.save_precision", "dropdown", "Save precision",
           "Number format of the saved LoRA. fp16 is half the size of fp32 and what the WebUI expects; "
           "usually fp16.",
           choices=schema.SAVE_PRECISIONS),
        _f("output.preferred_weight", "slider", "Preferred weight",
           "The weight the WebUI's Lora tab puts in the prompt when you click this LoRA. Usually 1.",
           minimum=0.0, maximum=2.0, step=0.05),
        _f("output.save_state_on_cancel", "checkbox", "Keep resume data when stopped",
           "When you stop a run, saves what is needed to continue it later. Usually on."),
        _f("output.save_lora_on_cancel", "checkbox", "Save the LoRA when stopped",
           "When you stop a run, still saves the LoRA (or the checkpoint of a full fine-tune) trained so "
           "far. Usually on."),
    ),
    "Samples": (
        _f("samples.every_epochs", "int", "Make samples every N epochs",
           "Makes preview images every N epochs so you can watch the LoRA learn. 0 = never.",
           minimum=0, step=1),
        _f("samples.sampler", "dropdown", "Sampler",
           "Sampler of the preview images; euler_a is Euler a.", choices=schema.SAMPLERS),
        _f("samples.prompts", "textarea", "Sample prompts",
           "One preview prompt per line; {trigger} becomes the trigger word. Options may end a line: "
           "--n negative prompt, --s steps, --l CFG scale, --d seed, --w width, --h height, e.g. "
           "{trigger}, portrait --n blurry --s 25 --w 512 --h 768. Empty = one sample from the first caption.",
           placeholder="{trigger}, portrait photo --n blurry --s 25"),
    ),
    "DreamBooth": (
        _f("dreambooth.instance_prompt", "text", "Instance prompt",
           "DreamBooth only. The prompt used for every image of your subject instead of its caption, e.g. "
           "a photo of {trigger} dog; {trigger} becomes the trigger word. Empty = use the captions.",
           placeholder="empty = use the captions"),
        _f("dreambooth.class_prompt", "text", "Class prompt",
           "DreamBooth types only, and needed there. What your subject is in general, e.g. a photo of a dog "
           "for your own dog. The class images are made with this prompt. More DreamBooth settings are under "
           "Advanced settings.",
           placeholder="e.g. a photo of a dog"),
        _f("dreambooth.class_negative_prompt", "text", "Class negative prompt",
           "Negative prompt used when the class images are generated. Usually empty."),
        _f("dreambooth.num_class_images", "int", "Number of class images",
           "How many class images DreamBooth uses. Missing ones are generated with the base model before "
           "training starts (this takes a while). Usually 100 to 200.",
           minimum=0, maximum=10000, step=1),
        _f("dreambooth.class_data", "text", "Class images folder",
           "A folder of your own class images (also called regularization images), e.g. photos of other "
           "dogs. Kohya-style subfolders such as 1_dog work too. Empty = generate them with the base model.",
           nullable=True, placeholder="empty = generate them with the base model"),
        _f("dreambooth.prior_loss_weight", "number", "Prior loss weight",
           "Prior preservation keeps the model's idea of the whole class (all dogs, not only yours) from "
           "turning into your subject, by training on the class at the same time. This sets how strongly. "
           "Usually 1.",
           minimum=0.0, maximum=100.0),
        _f("dreambooth.prior", "dropdown", "Prior preservation method",
           "How prior preservation (keeping the class as it was) is done. class-images: also train on "
           "images of the class, generated or your own. lora-off: compare with the base model's own result "
           "with the LoRA switched off, so no class images are needed (DreamBooth LoRA only). trigger-off: "
           "also denoise each training image with its caption minus the trigger word, and keep that result "
           "as the base model makes it, so the LoRA only acts through the trigger word (needs the trigger "
           "word; DreamBooth LoRA only). trigger-off+class-images: both trigger-off and class images in "
           "every step; class images with captions of other things keep those words as they were too "
           "(needs the trigger word and a class prompt; DreamBooth LoRA only).",
           choices=schema.PRIORS),
        _f("dreambooth.class_sampler", "dropdown", "Class image sampler",
           "Sampler used to generate the class images; euler_a is Euler a.", choices=schema.SAMPLERS),
        _f("dreambooth.class_steps", "slider", "Class image steps",
           "Sampling steps for each generated class image. Usually 20 to 30.",
           minimum=1, maximum=150, step=1),
        _f("dreambooth.class_cfg_scale", "slider", "Class image CFG scale",
           "CFG scale of the generated class images: how closely they follow the class prompt. Usually 7.",
           minimum=1.0, maximum=30.0, step=0.5),
    ),
    "Full fine-tune": (
        _f("finetune.ema", "checkbox", "Save a moving average of the weights (EMA)",
           "Full fine-tune only. Saves a slowly moving average of the trained weights instead of the last "
           "ones: smoother, often better results, but needs VRAM for one more copy of the model. Usually off "
           "for short runs."),
        _f("finetune.ema_decay", "number", "EMA decay",
           "Full fine-tune with EMA only. How slowly the average follows the training: closer to 1 is "
           "slower and smoother. Usually 0.9999; 0.999 for short runs of a few thousand steps.",
           minimum=0.5, maximum=0.999999),
        _f("finetune.extract_lora_rank", "int", "Also save a LoRA of the change (rank)",
           "Full fine-tune only. Above 0, also saves the difference between the new checkpoint and the base "
           "model as a LoRA of this rank into the WebUI's LoRA folder, to use on other models. 0 = no "
           "LoRA; 32 to 128 is usual.",
           minimum=0, maximum=1024, step=1),
    ),
}  # fmt: skip

FIELDS: tuple[FieldSpec, ...] = tuple(
    dataclasses.replace(spec, group=group) for group, specs in _TABLE.items() for spec in specs
)
_BY_PATH: dict[str, FieldSpec] = {spec.path: spec for spec in FIELDS}


def field_by_path(path: str) -> FieldSpec:
    """The FieldSpec of a dotted spec path; KeyError for a path the form does not show."""
    return _BY_PATH[path]


def groups() -> list[tuple[str, list[FieldSpec]]]:
    """(group, its fields) of the Advanced section in GROUPS order; the MAIN_VIEW rows are left out."""
    advanced = [s for s in FIELDS if s.path not in MAIN_VIEW]
    return [(g, [s for s in advanced if s.group == g]) for g in GROUPS if any(s.group == g for s in advanced)]


def main_view_fields() -> list[FieldSpec]:
    """The rows the tab shows in its main view, in MAIN_VIEW order."""
    return [_BY_PATH[path] for path in MAIN_VIEW]
