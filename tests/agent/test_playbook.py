"""Playbooks: the shipped ones load and cover every alert; bad ones are refused by name."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_args

import pytest
import yaml
from setuptools import find_packages

from agent.models import MITIGATIONS, AlertMetric
from agent.playbook import load_playbooks
from playbooks import playbook_files
from tools.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_playbooks_cover_every_alert_metric_once():
    books = load_playbooks()
    for metric in get_args(AlertMetric):
        book = books.for_metric(metric)
        assert metric in book.alerts
    names = {p.name for p in books.playbooks.values()}
    assert names == {"ranking", "infra", "allocation"}


def test_every_cause_maps_to_a_known_mitigation_per_scope():
    for book in load_playbooks().playbooks.values():
        for rule in book.causes:
            for scope in rule.scopes:
                assert rule.mitigation[scope] in MITIGATIONS


def test_playbooks_ship_as_package_data():
    # Loaded through importlib.resources, as from an installed wheel...
    assert {f.name for f in playbook_files()} == {"allocation.yaml", "infra.yaml", "ranking.yaml"}
    # ...and the distribution includes the package and its YAML files.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    packages = find_packages(str(ROOT), include=tool["packages"]["find"]["include"])
    assert "playbooks" in packages
    assert "agent.templates" in packages
    assert "*.yaml" in tool["package-data"]["*"]
    assert "*.j2" in tool["package-data"]["*"]


def _write(folder: Path, name: str, data: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)


def _copy_shipped(folder: Path) -> dict[str, dict]:
    books = {}
    for f in playbook_files():
        books[f.name] = yaml.safe_load(f.read_text())
        _write(folder, f.name, books[f.name])
    return books


def test_unknown_key_is_refused_with_file_and_field(tmp_path):
    books = _copy_shipped(tmp_path)
    books["infra.yaml"]["causes"][0]["sevirity"] = 1
    _write(tmp_path, "infra.yaml", books["infra.yaml"])
    with pytest.raises(ConfigError) as err:
        load_playbooks(tmp_path)
    assert err.value.field == "infra.yaml:causes.0.sevirity"


def test_a_signal_on_a_check_the_playbook_does_not_run_is_refused(tmp_path):
    books = _copy_shipped(tmp_path)
    books["allocation.yaml"]["causes"][0]["signals"].append({"check": "fallback"})
    _write(tmp_path, "allocation.yaml", books["allocation.yaml"])
    with pytest.raises(ConfigError, match="fallback' is not in checks"):
        load_playbooks(tmp_path)


def test_duplicate_keys_are_refused(tmp_path):
    _copy_shipped(tmp_path)
    text = (tmp_path / "allocation.yaml").read_text() + "\nname: again\n"
    _write(tmp_path, "allocation.yaml", text)
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_playbooks(tmp_path)


def test_an_uncovered_alert_metric_is_refused(tmp_path):
    _copy_shipped(tmp_path)
    (tmp_path / "allocation.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load_playbooks(tmp_path)
    assert err.value.field == "alerts" and err.value.value == ["srm"]


def test_a_cause_without_a_primary_signal_is_refused(tmp_path):
    books = _copy_shipped(tmp_path)
    for sig in books["allocation.yaml"]["causes"][0]["signals"]:
        sig["primary"] = False
    _write(tmp_path, "allocation.yaml", books["allocation.yaml"])
    with pytest.raises(ConfigError, match="primary signal"):
        load_playbooks(tmp_path)


@pytest.mark.parametrize(
    ("check", "scopes", "says"),
    [
        ("srm", ["experiment", "model"], "srm check runs only on ['experiment'], not on ['model']"),
        ("attribution", ["global"], "attribution check runs on no subject a playbook plans"),
        ("vibes", ["global"], "vibes"),
    ],
)
def test_a_check_is_validated_against_the_check_registry(tmp_path, check, scopes, says):
    books = _copy_shipped(tmp_path)
    spec = {"check": check, "scopes": scopes, "label": "x", "issue": "y"}
    books["infra.yaml"]["checks"].append(spec)
    _write(tmp_path, "infra.yaml", books["infra.yaml"])
    with pytest.raises(ConfigError) as err:
        load_playbooks(tmp_path)
    assert err.value.field.startswith("infra.yaml:checks.4")
    assert says in str(err.value)
