"""WebUI hook, run before the WebUI parses its command line: the extension's own flags.

Kept free of imports beyond argparse: the WebUI calls this on every start, before anything else loads.
"""

from __future__ import annotations

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA trainer extension")
    group.add_argument(
        "--lora-trainer-venv",
        type=str,
        default=None,
        help="folder of the LoRA trainer's own Python environment (default: .venv inside the extension folder)",
    )
    group.add_argument(
        "--lora-trainer-gpu",
        type=str,
        default=None,
        help="GPU the trainer uses, e.g. 0 or 1 (default: the same GPU as the WebUI)",
    )
