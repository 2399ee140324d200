"""Request and response models of the REST API, for the WebUI's /docs page.

Written to work on pydantic 1 (A1111, reForge) and pydantic 2 (Forge): plain fields, typing generics,
no validators or model config (no `from __future__ import annotations` either: FastAPI 0.94 with pydantic
1 resolves these annotations at import).
"""

from typing import Any, Optional

from pydantic import BaseModel, Field


class ErrorField(BaseModel):
    field: str = Field(description='The job spec field, e.g. "training.learning_rate"')
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong and what to do, for a person")
    fields: list[ErrorField] = Field(default_factory=list, description="Field-level problems of a job spec")


class ModelView(BaseModel):
    checkpoint: str
    title: str
    vae: Optional[str] = None
    model_type: Optional[str] = None
    prediction_type: Optional[str] = None
    loaded: bool = True


class TrainerEnvironment(BaseModel):
    ok: bool
    message: str = ""
    fix: str = ""


class PresetView(BaseModel):
    title: str
    description: str = ""
    builtin: bool = False
    spec: dict[str, Any] = Field(default_factory=dict)


class InfoResponse(BaseModel):
    version: str
    trainer: TrainerEnvironment
    model: Optional[ModelView] = Field(None, description="The checkpoint the WebUI has loaded (or selected)")
    lora_dir: str
    checkpoint_dir: str = Field(
        description='Where a full fine-tune (mode "dreambooth") saves its checkpoints: the WebUI\'s checkpoint '
        "folder"
    )
    modes: list[str] = Field(
        description='The training types (the job spec\'s "mode"): "lora", "dreambooth-lora" (a LoRA with prior '
        'preservation) and "dreambooth" (the full fine-tune, saved as a checkpoint)'
    )
    datasets_dir: str = Field(description="Where POST /datasets unpacks uploads")
    presets: list[PresetView]


class JobRequest(BaseModel):
    spec: dict[str, Any] = Field(
        description='A job spec (as `python -m lib_trainer spec --example` prints). model.checkpoint "current" or '
        "left out = the checkpoint the WebUI has loaded; a checkpoint title or file from the WebUI's list also works. "
        'output.dir (and finetune.lora_dir) are set by the WebUI: the LoRA folder, or for mode "dreambooth" the '
        "checkpoint folder."
    )
    preset: Optional[str] = Field(
        None, description="A preset title; the spec's own values are applied on top"
    )
    gpu_mode: str = Field("auto", description='"auto", "exclusive" (pause generation) or "shared"')
    compare_when_done: bool = Field(
        False, description="Make the epoch x strength grid when the job is done (LoRA jobs only)"
    )


class DatasetReport(BaseModel):
    path: str
    images: int
    captioned: int
    repeats_total: int = 0
    buckets: dict[str, int] = Field(default_factory=dict, description='"WIDTHxHEIGHT" -> number of images')
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class CheckResponse(BaseModel):
    ok: bool = Field(description="True when the job can start as it is")
    spec: dict[str, Any] = Field(description="The complete spec the job would run with")
    model: ModelView
    dataset: DatasetReport
    notes: list[str] = Field(default_factory=list)


class SubmitResponse(BaseModel):
    id: str
    name: str = Field(
        description="The LoRA's (or checkpoint's) file name: a free one if the asked-for name was taken"
    )
    status: str
    position: Optional[int] = Field(None, description="Place in the waiting queue, 0 = next")
    gpu_mode: str
    notes: list[str] = Field(default_factory=list)


class JobView(BaseModel):
    id: str
    name: str
    status: str
    position: Optional[int] = None
    step: Optional[int] = None
    total_steps: Optional[int] = None
    epoch: Optional[int] = None
    total_epochs: Optional[int] = None
    loss: Optional[float] = None
    avg_loss: Optional[float] = None
    it_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    message: Optional[str] = None
    error: Optional[str] = None
    error_field: Optional[str] = None
    output_name: Optional[str] = None
    training_type: Optional[str] = Field(
        None, description='The job spec\'s mode, e.g. "lora" or "dreambooth"'
    )
    files: list[str] = Field(default_factory=list, description="Every file written (full paths)")
    checkpoint_files: list[str] = Field(
        default_factory=list,
        description="Checkpoints a full fine-tune wrote (in the WebUI's checkpoint folder)",
    )
    lora_files: list[str] = Field(
        default_factory=list, description="LoRA files written (for a full fine-tune: the extracted LoRA)"
    )
    samples: list[str] = Field(default_factory=list, description="Sample images (names for /files/{name})")
    created: Optional[float] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    gpu_mode: Optional[str] = None
    resumable: bool = False
    last_seq: int = Field(0, description="The newest event's number: ask /events?since= this next time")


class EventsResponse(BaseModel):
    events: list[dict[str, Any]]
    last_seq: int


class ActionResponse(BaseModel):
    id: str
    status: str
    message: str


class CompareRequestBody(BaseModel):
    prompt: Optional[str] = Field(
        None, description="Default: the job's first sample prompt or its trigger word"
    )
    negative_prompt: Optional[str] = None
    epochs: Optional[str] = Field(
        None, description='e.g. "1, 2, final" or "1-10 (+2)"; default: the saved epochs'
    )
    strengths: Optional[str] = Field(None, description='Default "0.4, 0.6, 0.8, 1"')
    seed: Optional[int] = None
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    sampler: Optional[str] = Field(None, description='A sampler name of the WebUI, e.g. "Euler a"')


class CompareResponse(BaseModel):
    image: str = Field(description="The grid, PNG, base64")
    infotext: str
    file: str = Field(description="The grid's name under /jobs/{id}/files/")
    notes: list[str] = Field(default_factory=list)


class DatasetItem(BaseModel):
    name: str = Field(description='File name, e.g. "img001.png" or "10_mychar/img001.png"')
    data_base64: str
    caption: Optional[str] = None


class DatasetUpload(BaseModel):
    name: str = Field(description="Folder name for the dataset")
    items: Optional[list[DatasetItem]] = None
    zip_base64: Optional[str] = Field(None, description="A zip of images and captions instead of items")


class DatasetResponse(BaseModel):
    path: str = Field(description="Put this into the job spec's dataset.path")
    images: int
    captions: int
    bytes: int
    skipped: list[str] = Field(default_factory=list)
