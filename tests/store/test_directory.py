"""A study's results directory through its one owner: the stored spec typed, also when an
older version wrote it; a path that names one of its trials; what it is not."""

import pytest

from cifartune.config.validation import RETIRED_SPEC_KEYS
from cifartune.errors import StudyDirError
from cifartune.store.directory import StudyDirectory

from ..support import REPO


@pytest.mark.parametrize(
    "results", ["reports/cpu/results/optuna_asha_cpu", "reports/pbt_cpu/results/pbt_cpu"]
)
def test_the_stored_spec_of_an_older_version_reads_typed(results):
    # The CPU report's studies were written when a spec had checkpoint.keep (retired since).
    study = StudyDirectory(REPO / results)
    assert study.spec().name == study.name
    assert study.spec(["budget.wall=1h"]).budget.wall == "1h"  # with resume's --set


def test_a_retired_key_is_dropped_and_nothing_else(tmp_path):
    assert RETIRED_SPEC_KEYS == ("checkpoint.keep",)
    study = StudyDirectory(tmp_path)
    study.location.mkdir()
    study.spec_file.write_text("name: s\ncheckpoint: {keep: 2, every: 3}\n")
    assert study.spec().checkpoint.every == 3
    study.spec_file.write_text("name: s\ncheckpoint: {kept: 2}\n")
    with pytest.raises(Exception, match=r"checkpoint.kept: unknown key"):
        study.spec()


def test_a_path_may_name_a_trial_of_the_study(tmp_path):
    root = REPO / "reports/pbt_cpu/results/pbt_cpu"
    assert StudyDirectory.naming_trial(str(root))[1] is None
    study, trial = StudyDirectory.naming_trial(str(root / "ce123_00001"))
    assert (study.location.path, trial) == (str(root), "ce123_00001")


def test_a_directory_without_a_spec_says_so(tmp_path):
    with pytest.raises(StudyDirError, match=r"no spec\.yaml; the study never started here"):
        StudyDirectory(tmp_path).spec()
    assert not StudyDirectory(tmp_path).holds_study()
