"""The package metadata and the conda environment list the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    name, spec = match.group(1), match.group(2).replace(" ", "")
    return re.sub(r"[-_.]+", "-", name).lower(), spec


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(map(_normalise, project["dependencies"] + project["optional-dependencies"]["test"]))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    listed = {}
    for item in env["dependencies"]:
        entries = item["pip"] if isinstance(item, dict) else [item]
        for entry in entries:
            if entry.startswith("-e") or entry.split(">")[0].split("=")[0] in ("python", "pip"):
                continue
            name, spec = _normalise(entry)
            listed[name] = spec
    assert listed == wanted


def test_constraints_pin_every_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(
        _normalise(line.split("==")[0]) [0:1] + (line.split("==")[1].strip(),)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, _ = _normalise(requirement)
        assert name in pins, f"{name} is not pinned in constraints.txt"
