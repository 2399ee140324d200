"""Host-free LoRA / DreamBooth trainer library used by the WebUI extension and the CLI."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on every CPU import that an optional hub-downloaded kernel is missing; we never want
# that kernel (it would need the network), so the warning is noise for our users.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
