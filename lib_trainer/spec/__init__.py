"""The job spec: the one public contract shared by the CLI, the WebUI tab and the REST API.

Importing this package stays light (no torch) because the WebUI validates specs inside its own process.
"""

from .load import (
    CLI_FLAGS,
    apply_overrides,
    default_spec_dict,
    field_paths,
    load_spec_file,
    parse_resolution,
    parse_warmup,
    spec_from_dict,
    spec_to_dict,
)
from .schema import (
    SPEC_VERSION,
    DatasetSpec,
    DreamBoothSpec,
    FineTuneSpec,
    JobSpec,
    ModelSpec,
    NetworkSpec,
    OutputSpec,
    SamplePrompt,
    SamplesSpec,
    SpecError,
    TrainingSpec,
)

__all__ = [
    "CLI_FLAGS",
    "SPEC_VERSION",
    "DatasetSpec",
    "DreamBoothSpec",
    "FineTuneSpec",
    "JobSpec",
    "ModelSpec",
    "NetworkSpec",
    "OutputSpec",
    "SamplePrompt",
    "SamplesSpec",
    "SpecError",
    "TrainingSpec",
    "apply_overrides",
    "default_spec_dict",
    "field_paths",
    "load_spec_file",
    "parse_resolution",
    "parse_warmup",
    "spec_from_dict",
    "spec_to_dict",
]
