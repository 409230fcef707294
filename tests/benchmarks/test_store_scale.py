"""The store benchmark on a tiny study: it writes the study through the project's writers and
measures every reader it names, each in a process of its own (timings are the benchmark's to
report, not the test's to judge)."""

import json

from benchmarks.store_scale import main


def test_the_store_benchmark_measures_each_reader_of_a_written_study(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--trials", "4", "--epochs", "2", "--s3-trials", "--commit-every", "2"]
    assert main([*args, "--json", str(out), "--work", str(tmp_path), "--skip", "report"]) == 0
    rows = json.loads(out.read_text())
    (written,) = [r for r in rows if "files" in r]
    # Every trial committed: the tables' data files and checkpoints, no epoch or trial file.
    assert written["commits"] == 2 and written["table_data_files"] == 1
    assert not list((tmp_path / "local4" / "epochs").rglob("*.parquet"))
    readers = {r["reader"] for r in rows if "reader" in r}
    assert readers == {"status", "report data load", "mirror rebuild", "duckdb table",
                       "polars table"}  # fmt: skip
    assert all(r["wall_s"] > 0 and r["peak_mib"] > 0 for r in rows if "reader" in r)
