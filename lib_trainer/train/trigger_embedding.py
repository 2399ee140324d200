"""A learnt embedding for the trigger word: vectors that stand in for the word in every caption.

The WebUI applies a textual-inversion embedding by finding the tokens of its name in the prompt and feeding the
embedding's vectors to the text encoder in their place (A1111 `sd_hijack_clip.tokenize_line` puts placeholder
token 0 there and `EmbeddingsWithFixes` overwrites the token-embedding output at those positions, before the
position embeddings are added). We do exactly that in training and in our own sampling, so the vectors learnt
here mean the same thing when the WebUI loads them from the LoRA file ("bundled embedding").

Why the vectors train as `start + step_scale * offset`: Prodigy adapts one step size for all parameter groups
and refuses a separate learning rate, but an embedding needs larger steps than the LoRA to move within the
same run. For the Adam-family optimizers, Prodigy and Adafactor the update of `offset` does not depend on the
gradient's size, so multiplying it by `step_scale` multiplies the embedding's step by that factor under every
optimizer this trainer offers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

PLACEHOLDER_TOKEN = 0  # what A1111 puts in the token list where an embedding's vectors go


class TriggerEmbedding:
    """Vectors (one [count, width] tensor per text encoder) that replace `word` wherever it occurs in a prompt."""

    def __init__(
        self,
        word: str,
        tokenizers: Sequence,
        start: Sequence[torch.Tensor],
        step_scale: float = 1.0,
        trainable: bool = False,
    ):
        if len(start) != len(tokenizers):
            raise ValueError(f"{len(start)} vector sets for {len(tokenizers)} text encoders")
        counts = {s.shape[0] for s in start}
        if len(counts) != 1:
            raise ValueError(f"every text encoder needs the same number of vectors (got {sorted(counts)})")
        self.word = word
        self.count = counts.pop()
        self.word_ids = [token_ids(tok, word) for tok in tokenizers]
        for ids in self.word_ids:
            if not ids:
                raise ValueError(f"the trigger word {word!r} has no tokens")
        self.start = [s.detach().float().clone() for s in start]
        self.offsets = [torch.nn.Parameter(torch.zeros_like(s), requires_grad=trainable) for s in self.start]
        self.step_scale = step_scale
        self._slots: dict[int, torch.Tensor] = {}
        self._hooks: list = []

    # ---- the vectors ------------------------------------------------------------------------------------

    def vectors(self, index: int) -> torch.Tensor:
        """The current vectors for text encoder `index` (fp32, on the device they train on)."""
        return self.start[index] + self.step_scale * self.offsets[index]

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.offsets)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.offsets)

    def set_trainable(self, on: bool) -> None:
        for p in self.offsets:
            p.requires_grad_(on)
            if not on:
                p.grad = None  # a frozen offset must not move: optimizers skip parameters without a gradient

    def to(self, device: torch.device) -> TriggerEmbedding:
        self.start = [s.to(device) for s in self.start]
        for p in self.offsets:
            p.data = p.data.to(device)
        return self

    # ---- prompts -> token ids with slots ----------------------------------------------------------------

    def tokenize(self, index: int, tokenizer, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [B, L], slots [B, L]) as the tokenizer's own max-length padding and truncation would
        give, except that each occurrence of the trigger word becomes `count` placeholder tokens whose slots
        name the vector that goes there (-1: an ordinary token). Vectors that would not fit in the 75-token
        window are cut off with the rest of the caption; the WebUI would move them to a second chunk, which
        training does not read either."""
        word = self.word_ids[index]
        limit = tokenizer.model_max_length - 2
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows, slot_rows = [], []
        for caption in captions:
            tokens = token_ids(tokenizer, caption)
            ids: list[int] = []
            slots: list[int] = []
            i = 0
            while i < len(tokens) and len(ids) < limit:
                if tokens[i : i + len(word)] == word:
                    if len(ids) + self.count > limit:
                        break
                    ids += [PLACEHOLDER_TOKEN] * self.count
                    slots += list(range(self.count))
                    i += len(word)
                else:
                    ids.append(tokens[i])
                    slots.append(-1)
                    i += 1
            ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
            slots = [-1, *slots, -1]
            fill = tokenizer.model_max_length - len(ids)
            rows.append(ids + [pad] * fill)
            slot_rows.append(slots + [-1] * fill)
        return torch.tensor(rows, dtype=torch.long), torch.tensor(slot_rows, dtype=torch.long)

    # ---- the text encoder side --------------------------------------------------------------------------

    def attach(self, encoders: Sequence[torch.nn.Module]) -> None:
        """Hook each encoder's token embedding so that, inside `filling`, the slots get the vectors."""
        self.detach()
        for index, encoder in enumerate(encoders):
            module = encoder.get_input_embeddings()
            self._hooks.append(module.register_forward_hook(self._hook_for(index)))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @contextlib.contextmanager
    def filling(self, index: int, slots: torch.Tensor) -> Iterator[None]:
        """While active, the next forward pass of encoder `index` gets the vectors at `slots`."""
        self._slots[index] = slots
        try:
            yield
        finally:
            self._slots.pop(index, None)

    def _hook_for(self, index: int):
        def hook(module, inputs, output):
            slots = self._slots.get(index)
            if slots is None:
                return output
            slots = slots.to(output.device)
            if slots.shape != output.shape[:2]:
                raise ValueError(
                    f"slots {tuple(slots.shape)} do not match token embeddings {tuple(output.shape)}"
                )
            vectors = self.vectors(index).to(output.device, output.dtype)
            placed = vectors[slots.clamp(min=0)]
            return torch.where((slots >= 0).unsqueeze(-1), placed, output)

        return hook


def embedding_steps(fraction: float, total_steps: int) -> int:
    """How many of the first steps train the vectors (network.trigger_train_fraction); after that they stay
    fixed while the LoRA goes on learning the subject against them (longer runs let them grow unchecked)."""
    return max(1, math.ceil(total_steps * fraction))


def token_ids(tokenizer, text: str) -> list[int]:
    """The tokens of `text` without start/end tokens (the way the WebUI looks an embedding's name up)."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def starting_vectors(
    encoders: Sequence[torch.nn.Module], tokenizers: Sequence, text: str, count: int
) -> list[torch.Tensor]:
    """Where the vectors start, per encoder: the token rows of `text` if it has exactly `count` tokens,
    otherwise each vector starts at their mean (so a one-vector embedding of a two-token word starts between
    them). Starting from what the base model already reads for the word keeps the first steps gentle."""
    out = []
    for encoder, tokenizer in zip(encoders, tokenizers, strict=True):
        ids = token_ids(tokenizer, text)
        if not ids:
            raise ValueError(f"{text!r} has no tokens to start the trigger embedding from")
        rows = encoder.get_input_embeddings().weight.detach()[ids].float()
        out.append(rows.clone() if len(ids) == count else rows.mean(0, keepdim=True).repeat(count, 1))
    return out


def load_bundled(base, tensors) -> TriggerEmbedding | None:
    """Use the embedding bundled in a LoRA file's tensors (if any) for `base`'s prompts, as the WebUI would
    while that LoRA is active; returns it, or None when the file has none."""
    from ..export.bundled_embedding import read_bundled_embeddings

    found = read_bundled_embeddings(tensors)
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"the file bundles {len(found)} embeddings ({sorted(found)}); one is supported here")
    ((word, vectors),) = found.items()
    if len(vectors) != len(base.text_encoders):
        raise ValueError(
            f"embedding {word!r} has vectors for {len(vectors)} text encoders, the model has "
            f"{len(base.text_encoders)}"
        )
    device = base.text_encoders[0].get_input_embeddings().weight.device
    trigger = TriggerEmbedding(word, base.tokenizers, vectors).to(device)
    trigger.attach(base.text_encoders)
    base.trigger_embedding = trigger
    return trigger
