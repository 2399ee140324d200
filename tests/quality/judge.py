"""The toy judge: a small CNN that reads a toy-world picture back into its words (issue 8).

Quality tests score images a tiny diffusion model generated ("is this a red heart?"), so the judge is
trained by `make_judge.py` on augmented renders (blur, VAE-like softening, noise, colour shifts, blotches)
and its weights are committed; this module only builds the network and loads them, it trains nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open
from torch import nn

from . import toyworld as tw

JUDGE_FILE = Path(__file__).parent / "data" / "toy-judge.safetensors"
REBUILD_COMMAND = ".venv/bin/python tests/quality/make_judge.py"
FORMAT = "toy-judge-v1"
IMAGE_SIZE = 64

HEADS: dict[str, tuple[str, ...]] = {
    "shape": tw.ALL_SHAPES,
    "colour": tuple(tw.COLOURS),
    "style": tw.STYLES,
    "background": tuple(tw.BACKGROUNDS),
    "size": tuple(tw.SIZES),
    "position": tuple(tw.POSITIONS),
}
"""One classifier head per attribute; class order is the toy world's own (the order `labels` indexes)."""

_STAGES: tuple[int, ...] = (32, 64, 96, 128)
_POSITION_CHANNELS = 8
_MEAN, _STD = 0.5, 0.25


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class JudgeNet(nn.Module):
    """Four stride-2 stages (64 -> 4 px). Average pooling forgets where things are, so a 1x1 conv keeps a
    flattened 4x4 map next to it: position and size heads need the layout, shape and colour do not."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv(3, _STAGES[0], 2)
        for cin, cout in pairwise(_STAGES):
            layers += _conv(cin, cout, 2) + _conv(cout, cout, 1)
        self.body = nn.Sequential(*layers)
        self.where = nn.Sequential(nn.Conv2d(_STAGES[-1], _POSITION_CHANNELS, 1), nn.ReLU(inplace=True))
        features = _STAGES[-1] + _POSITION_CHANNELS * (IMAGE_SIZE // 16) ** 2
        self.heads = nn.ModuleDict(
            {name: nn.Linear(features, len(classes)) for name, classes in HEADS.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`x`: (N, 3, 64, 64) floats in [0, 1]. Returns logits per head."""
        h = self.body((x - _MEAN) / _STD)
        features = torch.cat([h.mean(dim=(2, 3)), self.where(h).flatten(1)], dim=1)
        return {name: head(features) for name, head in self.heads.items()}


@dataclass(frozen=True)
class Verdict:
    """What the judge sees in one image: the most likely word per attribute and its probability."""

    shape: str
    shape_p: float
    colour: str
    colour_p: float
    style: str
    style_p: float
    """Probability of "striped" (not of the chosen style), so thresholds read the same either way."""
    background: str
    background_p: float
    size: str
    size_p: float
    position: str
    position_p: float

    @property
    def subject(self) -> bool:
        return self.shape == tw.SUBJECT_SHAPE

    @property
    def striped(self) -> bool:
        return self.style_p >= 0.5


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) floats in [0, 1]; other sizes are resized bilinearly, as a test would."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


class Judge:
    """A loaded judge (eval mode, CPU) with the metadata it was trained with."""

    def __init__(self, net: JudgeNet, metadata: dict[str, str] | None = None) -> None:
        self.net = net.eval()
        self.metadata = metadata or {}

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        """Softmax per head for a (N, 3, 64, 64) tensor in [0, 1], in batches."""
        chunks = [self.net(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
        if not chunks:
            return {name: torch.zeros(0, len(classes)) for name, classes in HEADS.items()}
        return {name: torch.cat([c[name] for c in chunks]).softmax(-1) for name in HEADS}

    def predict(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """One Verdict per image."""
        probs = self.probabilities(to_tensor(images))
        return [_verdict({name: p[i] for name, p in probs.items()}) for i in range(len(images))]


def _verdict(probs: dict[str, torch.Tensor]) -> Verdict:
    words: dict[str, str | float] = {}
    for name, classes in HEADS.items():
        best = int(probs[name].argmax())
        words[name], words[f"{name}_p"] = classes[best], float(probs[name][best])
    words["style_p"] = float(probs["style"][1])
    words["style"] = tw.STYLE_NAME if words["style_p"] >= 0.5 else "plain"
    return Verdict(**words)  # type: ignore[arg-type]


def load_judge(path: str | Path = JUDGE_FILE) -> Judge:
    """The committed judge. Weights are stored in fp16 (small enough to commit) and run in fp32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"toy judge weights not found at {path}; rebuild them with `{REBUILD_COMMAND}`"
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file; rebuild it with `{REBUILD_COMMAND}`")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    net = JudgeNet()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"{path} does not match JudgeNet ({missing=}, {unexpected=}); rebuild it")
    return Judge(net, metadata)


def state_for_saving(net: JudgeNet) -> dict[str, torch.Tensor]:
    """fp16 weights without BatchNorm's step counters: what goes into the committed file (~1 MB)."""
    return {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def accuracy(
    judge: Judge,
    items: Sequence[tuple[tw.Scene, dict]],
    images: Sequence[Image.Image] | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy on `toyworld.judge_set` items (rendered clean unless `images` are given),
    plus "subject" (heart or not) and "style" (striped or not) as binary accuracies."""
    if images is None:
        images = [tw.render(scene) for scene, _ in items]
    verdicts = judge.predict(images)
    hits: dict[str, int] = dict.fromkeys([*HEADS, "subject"], 0)
    for verdict, (_, truth) in zip(verdicts, items, strict=True):
        for name, classes in HEADS.items():
            if name != "style":
                hits[name] += classes.index(getattr(verdict, name)) == truth[name]
        hits["style"] += verdict.striped == truth["style"]
        hits["subject"] += verdict.subject == truth["subject"]
    return {name: count / max(len(items), 1) for name, count in hits.items()}


def metadata_accuracies(judge: Judge) -> dict[str, dict[str, float]]:
    """The held-out accuracies make_judge.py recorded in the file (empty if none)."""
    return json.loads(judge.metadata.get("held_out_accuracy", "{}"))
