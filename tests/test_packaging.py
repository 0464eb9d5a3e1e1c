"""How pretrain installs: ranges in pyproject.toml, so a cluster's own torch stays; exact versions in
constraints.txt, which `make` installs from."""

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(line) for line in listed]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pinned)
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in pinned}


def test_dependencies_are_ranges_and_constraints_pin_a_version_inside_each():
    pinned = pins()
    for requirement in requirements():
        assert not any(spec.operator == "==" for spec in requirement.specifier), f"{requirement}: a range, not a pin"
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name}: no exact version in constraints.txt"
        assert requirement.specifier.contains(version), f"constraints.txt's {version} is outside {requirement}"
    assert next(r for r in requirements() if r.name == "torch").specifier.contains("2.13.0+cu128")


def test_installing_the_project_keeps_the_torch_build_already_there(tmp_path):
    """This environment's torch is a local build (+cpu here, +cu128 on a cluster): pip keeps it, installs nothing."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet"]
    subprocess.run([*command, "--report", str(report), str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    to_install = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert to_install == {"pretrain"}, to_install
    assert metadata.version("torch").startswith(pins()["torch"])
