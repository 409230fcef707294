"""benchmarks/search_quality.py, at its smoke size: both searchers run through the harness."""

import pytest

from benchmarks import search_quality


def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    rows = search_quality.main(["--smoke"])
    out = capsys.readouterr().out
    assert "| mean regret old | mean regret new |" in out
    assert {row["regime"] for row in rows} == {"no-crossing", "crossing"}
    assert all(row["seeds"] == 2 and row["old"] >= 0 and row["new"] >= 0 for row in rows)
    assert "new: per-epoch values held at their epoch" in out
