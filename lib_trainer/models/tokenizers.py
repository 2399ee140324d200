"""CLIP tokenizers built offline from the BPE merges shipped with the extension.

Stable Diffusion's tokenizers (OpenAI CLIP for SD1 and SDXL's first encoder, OpenCLIP for SD2 and SDXL's
second) share one BPE vocabulary; they differ only in the pad token. kohya downloads them from the hub on
first use, a top complaint from offline users. We ship the 48,894 merges (200 KB gzipped) and rebuild the
vocabulary from them the way CLIP's reference tokenizer does, so nothing is ever fetched.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

_MERGES_RESOURCE = ("lib_trainer.resources", "clip_tokenizer/merges.txt.gz")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (the first 256 vocabulary entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def read_merges() -> list[str]:
    """The shipped merge rules, one 'a b' pair per entry, without the version header."""
    data = resources.files(_MERGES_RESOURCE[0]).joinpath(_MERGES_RESOURCE[1]).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return [line for line in lines[1:] if line.strip()]


def build_vocab(merges: list[str]) -> dict[str, int]:
    """Vocabulary in CLIP's order: bytes, bytes+'</w>', one token per merge, then BOS and EOS."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = read_merges()
    return build_vocab(merges), [tuple(m.split(" ", 1)) for m in merges]


def load_clip_tokenizer(pad_with_exclamation: bool = False):
    """A transformers CLIPTokenizer; OpenCLIP encoders (SD2, SDXL's second) pad with '!' (id 0)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    kwargs = {"pad_token": "!"} if pad_with_exclamation else {"pad_token": EOS}
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        model_max_length=77,
        **kwargs,
    )
