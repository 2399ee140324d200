"""The benchmark cases: one set of training settings, translated for each trainer by ours.py and kohya.py.

A case says what is trained (architecture, size, resolution, batch, optimizer, memory savers); everything
else is fixed for both trainers alike: LoRA on the UNet only (rank 32, alpha 32, kohya's module set),
constant learning rate 1e-4, gradient clipping at 1.0, latents cached in memory, no sampling and no saving
until the end, seed 42, the data loaded in the training process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Case:
    name: str
    arch: str  # "sd1" | "sdxl"
    size: str  # "full" (real architecture) | "tiny" (the test models)
    resolution: int
    batch_size: int
    optimizer: str = "AdamW"  # "AdamW" | "AdamW8bit"
    gradient_checkpointing: bool = False
    cache_text_encoder_outputs: bool = False  # asked for; a trainer that cannot do it says so in a note
    rank: int = 32
    alpha: float = 32.0
    mixed_precision: str = "bf16"
    learning_rate: float = 1e-4
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)


GPU_CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("sd15-b1", "sd1", "full", 512, 1),
        Case("sd15-b4", "sd1", "full", 512, 4),
        Case("sd15-b4-8bit", "sd1", "full", 512, 4, optimizer="AdamW8bit"),
        Case("sd15-b1-8bit", "sd1", "full", 512, 1, optimizer="AdamW8bit"),
        Case(
            "sdxl-b1", "sdxl", "full", 1024, 1, gradient_checkpointing=True, cache_text_encoder_outputs=True
        ),
        # The same without kohya's text-encoder cache: both encode the captions every step.
        Case("sdxl-b1-te", "sdxl", "full", 1024, 1, gradient_checkpointing=True),
        Case(
            "sdxl-b1-8bit",
            "sdxl",
            "full",
            1024,
            1,
            optimizer="AdamW8bit",
            gradient_checkpointing=True,
            cache_text_encoder_outputs=True,
        ),
    )
}
DEFAULT_GPU_CASES = ("sd15-b1", "sd15-b4", "sd15-b4-8bit", "sdxl-b1")

# The CPU variant: the tiny test models (seconds per run), our trainer only, for regression tracking.
CPU_CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("tiny-sd1-b1", "sd1", "tiny", 128, 1, mixed_precision="no"),
        Case("tiny-sd1-b4", "sd1", "tiny", 128, 4, mixed_precision="no"),
        Case("tiny-sdxl-b1", "sdxl", "tiny", 128, 1, mixed_precision="no", gradient_checkpointing=True),
        # Full-size SD1.5 at a low resolution: proves both trainers accept the GPU command lines on a CPU.
        Case("cpu-sd15-smoke", "sd1", "full", 256, 1, mixed_precision="no"),
    )
}
DEFAULT_CPU_CASES = ("tiny-sd1-b1", "tiny-sd1-b4", "tiny-sdxl-b1")

ALL_CASES: dict[str, Case] = {**GPU_CASES, **CPU_CASES}


def select_cases(names: str | None, device: str, resolution: int | None = None) -> list[Case]:
    """The cases named in a comma-separated list (or the device's defaults), with an optional resolution."""
    default = DEFAULT_GPU_CASES if device == "cuda" else DEFAULT_CPU_CASES
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else list(default)
    unknown = [n for n in wanted if n not in ALL_CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(ALL_CASES)}")
    cases = [ALL_CASES[n] for n in wanted]
    if resolution:
        cases = [replace(c, resolution=resolution) for c in cases]
    return cases
