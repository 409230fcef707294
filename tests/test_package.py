"""What holds for the package as a whole: importing any of its modules changes nothing in the
process, and the import contracts (pyproject.toml) hold."""

import json
import subprocess
import sys
from pathlib import Path

from .support import REPO

# Imports every module of the package in a fresh interpreter, with os.umask watched (it can
# only be read by setting it: a race with any thread writing files) and the environment and
# umask compared before and after. The libraries are imported first: what they do on import
# (Ray sets RAY_CLIENT_MODE) is theirs, not the package's.
IMPORT_ALL = """
import importlib, json, os, pkgutil
for library in ("ray", "ray.tune", "ray.tune.search.optuna", "ray.job_submission", "torch",
                "torchvision", "optuna", "optuna_dashboard", "pandas", "pyarrow", "seaborn"):
    importlib.import_module(library)
calls = []
real_umask = os.umask
os.umask = lambda mask: calls.append(mask) or real_umask(mask)
def umask():
    return open("/proc/self/status").read().split("Umask:")[1].split()[0]
before = (dict(os.environ), umask())
import cifartune
names = [m.name for m in pkgutil.walk_packages(cifartune.__path__, "cifartune.")]
for name in names:
    if name != "cifartune.__main__":  # running the CLI is its purpose
        importlib.import_module(name)
after = (dict(os.environ), umask())
added = sorted(set(after[0]) - set(before[0]))
changed = sorted(k for k in before[0] if after[0].get(k) != before[0][k])
print(json.dumps({"modules": len(names), "added": added, "changed": changed,
                  "umask": [before[1], after[1]], "umask_calls": calls}))
"""


def test_importing_any_module_leaves_the_environment_and_umask_as_they_were():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: __import__("os").umask(0o027),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["modules"] > 60
    assert seen["added"] == [] and seen["changed"] == []
    assert seen["umask"] == ["0027", "0027"] and seen["umask_calls"] == []


def test_the_import_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
