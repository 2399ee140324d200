"""What a full fine-tune leaves behind: checkpoints in the WebUI's layout and, if asked, an extracted LoRA.

Checkpoints carry the same training record as our LoRAs (kohya's `ss_*` keys without the network ones, the
`modelspec.*` keys and the job spec), so the WebUI's metadata view and other tools can tell what made them.
"""

from __future__ import annotations

from pathlib import Path

from ..export.checkpoint_file import save_checkpoint
from ..export.extract_lora import extract_lora, extracted_metadata, kohya_tensors
from ..export.lora_file import save_lora
from ..export.lora_names import next_free_name
from ..export.metadata import add_modelspec, build_lora_metadata
from .finetune import ema_weights

_LORA_ONLY_KEYS = ("ss_network_", "sshs_")


def checkpoint_metadata(ctx, stem: str, epoch: int) -> dict[str, str]:
    from .outputs import training_info

    info = training_info(ctx, stem, epoch)
    meta = {k: v for k, v in build_lora_metadata(info).items() if not k.startswith(_LORA_ONLY_KEYS)}
    meta["ss_training_comment"] = (
        f"DreamBooth full fine-tune of {ctx.resolved.checkpoint.name}"
        + (" with EMA" if ctx.spec.finetune.ema else "")
        + (
            " (UNet and text encoder)"
            if ctx.spec.network.train_text_encoder and ctx.spec.network.train_unet
            else ""
        )
    )
    return add_modelspec(meta, info)


def save_checkpoint_file(ctx, stem: str, epoch: int) -> Path:
    """The model as trained so far (the EMA weights when on), as `output.dir/stem.safetensors`."""
    path = ctx.resolved.output_dir / f"{stem}.safetensors"
    ctx.resolved.output_dir.mkdir(parents=True, exist_ok=True)
    ctx.events.emit("info", message=f"writing the checkpoint {path.name}", stage="save")
    with ema_weights(ctx):
        save_checkpoint(
            path,
            ctx.base,
            ctx.resolved.checkpoint,
            text_encoders=ctx.spec.network.train_text_encoder,
            precision=ctx.spec.output.save_precision,
            metadata=checkpoint_metadata(ctx, stem, epoch),
        )
    ctx.events.emit("checkpoint", path=str(path), epoch=epoch, step=ctx.progress.global_step, model_file=True)
    ctx.saved_files.append(str(path))
    return path


def extract_lora_output(ctx, checkpoint: Path) -> Path | None:
    """finetune.extract_lora_rank > 0: the fine-tune's change as a LoRA in finetune.lora_dir (free name)."""
    from ..models.loader import load_base_model

    rank = ctx.spec.finetune.extract_lora_rank
    if not rank:
        return None
    lora_dir = Path(ctx.spec.finetune.lora_dir).expanduser()
    ctx.events.emit("info", message=f"extracting a rank-{rank} LoRA from the fine-tune", stage="save")
    original = load_base_model(ctx.resolved.checkpoint, model_type=ctx.spec.model.model_type)  # untrained
    with_te = ctx.spec.network.train_text_encoder
    with ema_weights(ctx):
        layers = extract_lora(
            original.unet,
            ctx.base.unet,
            original.text_encoders if with_te else [],
            ctx.base.text_encoders if with_te else [],
            family=ctx.base.arch.family,
            unet_config=ctx.base.arch.unet_config,
            rank=rank,
        )
    del original
    if not layers:
        ctx.events.emit("warning", message="no LoRA extracted: the fine-tune left every LoRA layer unchanged")
        return None
    lora_dir.mkdir(parents=True, exist_ok=True)
    stem = next_free_name(lora_dir, ctx.progress.output_name)
    metadata = extracted_metadata(ctx.base.arch, ctx.resolved.checkpoint.name, checkpoint.name, rank, stem)
    metadata["ss_output_name"] = stem
    path = save_lora(lora_dir / f"{stem}.safetensors", kohya_tensors(layers), metadata, "fp16")
    kept = sum(layer.kept for layer in layers) / len(layers)
    ctx.events.emit(
        "lora_extracted", path=str(path), rank=rank, layers=len(layers), kept_energy=round(kept, 4)
    )
    ctx.saved_files.append(str(path))
    return path
