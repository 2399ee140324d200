"""The quality table's variants are jobs the trainer accepts, with the epochs and judged steps the table
says (a variant that fails validation would only show after the others' half hour of training)."""

from __future__ import annotations

import pytest

from lib_trainer.spec.load import spec_from_dict

from .make_quality_table import CLASS_FOLDER_VARIANTS, VARIANTS, judged_epochs, variant_epochs, variant_job
from .scores import SUBJECT_EPOCHS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_a_valid_job(name, tmp_path):
    mode, _, sections = VARIANTS[name]
    spec = spec_from_dict(variant_job(name, tmp_path))
    assert spec.mode == mode
    assert spec.training.epochs == (SUBJECT_EPOCHS if name.endswith("-long") else 10)
    assert bool(spec.dreambooth.class_data) == (name in CLASS_FOLDER_VARIANTS)
    assert spec.network.learn_trigger == sections.get("network", {}).get("learn_trigger", False)


def test_judged_epochs_are_a_fifth_half_and_all_of_the_job():
    assert judged_epochs(variant_epochs("prodigy")) == (2, 5, 10)
    assert judged_epochs(variant_epochs("preset-long")) == (
        SUBJECT_EPOCHS // 5,
        SUBJECT_EPOCHS // 2,
        SUBJECT_EPOCHS,
    )
