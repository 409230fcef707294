"""docs/config.md is generated from the config and spec models: it must say what the code says."""

from cifartune.config.reference import config_reference
from cifartune.config.spec import StudySpec
from cifartune.config.trial import TrialConfig

from ..support import REPO


def test_docs_config_md_is_the_generated_reference():
    written = (REPO / "docs" / "config.md").read_text()
    assert written == config_reference(), (
        "docs/config.md is stale: python -m cifartune.config.reference > docs/config.md"
    )


def test_every_key_is_in_the_reference_with_its_description():
    text = config_reference()
    for key, field in TrialConfig.model_fields["data"].annotation.model_fields.items():
        assert f"| `data.{key}` |" in text and (field.description or "") in text
    for key in ("optim.lr", "schedule.name", "epochs", "batch_size"):
        assert f"| `{key}` |" in text
    for key in StudySpec.model_fields:
        if key not in ("search", "scheduler", "resources", "checkpoint"):
            assert f"| `{key}` |" in text, key
