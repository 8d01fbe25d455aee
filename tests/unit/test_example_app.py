"""The example app stands on its own: copied out of this repository, its tests pass with
only what its own requirements-dev.txt installs.

The copy runs in a child Python whose imports are guarded: a module that belongs to an
installed distribution outside the closure of the app's requirements is refused, as it
would be missing in the app repo's virtualenv; and nothing of this repository is on its
path. (Installing into a fresh virtualenv would need PyPI, which tests must not reach.)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "app"

GUARD = """
import importlib.metadata, json, os, re, sys

ALLOWED = set(json.loads(os.environ["APP_ALLOWED_DISTRIBUTIONS"]))
OWNERS = importlib.metadata.packages_distributions()


class NotInTheAppsRequirements:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        owners = {re.sub(r"[-_.]+", "-", o).lower() for o in OWNERS.get(top, ())}
        if owners and not owners & ALLOWED:
            raise ModuleNotFoundError(f"No module named {top!r}: {sorted(owners)} is not in the app's requirements")
        return None


sys.meta_path.insert(0, NotInTheAppsRequirements())
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> list[str]:
    """The distributions a requirements file names, following `-r`."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names += requirement_names(path.parent / line[2:].strip())
        elif line:
            names.append(canonical(Requirement(line).name))
    return names


def closure(names: list[str]) -> set[str]:
    """Those distributions and everything they require (without extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def guarded(tmp_path: Path) -> dict[str, str]:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    allowed = closure(requirement_names(APP / "requirements-dev.txt"))
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(guard),  # the guard, and nothing of this repository
        "PYTHONNOUSERSITE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # plugins this repo installs are not the app's
        "APP_ALLOWED_DISTRIBUTIONS": json.dumps(sorted(allowed)),
    }


def test_a_copy_of_the_example_app_passes_its_tests_with_its_own_requirements(tmp_path):
    copy = tmp_path / "my-app"
    shutil.copytree(APP, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    env = guarded(tmp_path)
    # The guard bites: what the swarm program needs and the app does not is refused.
    refused = subprocess.run([sys.executable, "-c", "import pulumi_random"], env=env, cwd=copy,
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode != 0 and "is not in the app's requirements" in refused.stderr, refused.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env=env, cwd=copy,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    tail = done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert re.search(r"\b(\d+) passed\b", done.stdout) and " failed" not in done.stdout, tail
    assert int(re.search(r"\b(\d+) passed\b", done.stdout).group(1)) >= 13, tail
