"""Host-free LoRA / DreamBooth trainer library used by the WebUI extension and the CLI."""

__version__ = "0.1.0"
