"""The builder's form: templates that validate, and each error's path mapped to its field."""

from __future__ import annotations

import pytest

from agent.console.forms import TEMPLATES, errors_by_field, experiment_from_form, template_form
from lifecycle.config import Layer, ModelEntry
from lifecycle.validation import World, check_file
from tools.errors import ConfigError, ConfigProblems


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_is_a_valid_experiment(name: str) -> None:
    form = template_form(name, owner="alice", layers=["ranking"], models=["ctr_a", "ctr_b"])
    form["id"] = f"t-{name}"
    file = experiment_from_form(form)
    (exp,) = file.experiments
    assert exp.owner == "alice" and exp.layer == "ranking" and len(exp.arms) == 2
    world = World(
        layers={"ranking": Layer(id="ranking")},
        models={m: {"1": ModelEntry(id=m)} for m in ("ctr_a", "ctr_b")},
    )
    assert check_file(file, world) == []


def test_targeting_and_stages_are_parsed() -> None:
    form = template_form("ranking", owner="bob", layers=["ranking"], models=["a", "b"])
    form |= {"id": "x1", "targeting": "country=US,BR; platform=ios", "stages": "10:30, 100"}
    (exp,) = experiment_from_form(form).experiments
    assert exp.targeting == {"country": ["US", "BR"], "platform": ["ios"]}
    assert [(s.percent, s.min_minutes) for s in exp.rollout.stages] == [(10, 30), (100, 60)]


def test_every_problem_lands_beside_its_field() -> None:
    form = template_form("ranking", owner="", layers=["ranking"], models=["a", "b"])
    form |= {
        "id": "bad id!",
        "traffic_pct": "lots",
        "targeting": "country",
        "stages": "50:60, 20:60",
        "control": "baseline",
    }
    with pytest.raises(ConfigError) as err:
        experiment_from_form(form)
    problems = err.value.problems if isinstance(err.value, ConfigProblems) else [err.value]
    shown = errors_by_field(problems)
    assert {"id", "owner", "traffic_pct", "targeting"} <= set(shown), shown
    assert any("property=value" in m for m in shown["targeting"])
