"""Vigil's shipped playbooks: one YAML file per family of alert kinds.

The files are package data, so they load the same from a source checkout and from an installed
wheel; :func:`agent.playbook.load_playbooks` reads them (or a folder of your own).
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["playbook_files"]


def playbook_files() -> list[Traversable]:
    """The shipped playbook files (``*.yaml``), sorted by name."""
    root = files(__name__)
    return sorted(
        (entry for entry in root.iterdir() if entry.name.endswith(".yaml")),
        key=lambda entry: entry.name,
    )
