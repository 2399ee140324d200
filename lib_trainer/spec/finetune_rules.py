"""Rules of thumb for the full fine-tune that both the trainer and the WebUI say out loud (torch-free, so
the WebUI process can use them): when a learning rate is too high for it, and how many checkpoints it saves."""

from __future__ import annotations

from .schema import JobSpec

HIGH_FULL_LR = 2e-5  # above this a full fine-tune usually wrecks the model within a few hundred steps


def high_learning_rate(spec: JobSpec) -> float | None:
    """The highest learning rate of the trained parts when it is too high for a full fine-tune, else None
    (Prodigy sets its own step size)."""
    rates = [spec.training.learning_rate]
    if spec.network.train_text_encoder and spec.training.text_encoder_lr:
        rates.append(spec.training.text_encoder_lr)
    if spec.training.optimizer.lower().startswith("prodigy") or max(rates) <= HIGH_FULL_LR:
        return None
    return max(rates)


def saved_checkpoints(spec: JobSpec, epochs: int) -> int:
    """Files a job of `epochs` epochs writes: one per output.save_every_epochs before the last epoch, plus the
    final one (the rule of train.outputs.end_of_epoch)."""
    every = spec.output.save_every_epochs
    return 1 + ((epochs - 1) // every if every else 0)
