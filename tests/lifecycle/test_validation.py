"""Every validation rule, each with a bad configuration: the error names the field and the value."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from lifecycle.config import Layer, ModelEntry
from lifecycle.validation import (
    World,
    check_file,
    load_experiment_file,
    make_vocabulary,
    parse_experiment_file,
    validate_file,
)
from tools.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "experiments.yaml"


def base() -> dict[str, Any]:
    return {
        "layers": [{"id": "ranking"}],
        "models": [{"id": "ctr_v41"}, {"id": "ctr_v42"}],
        "experiments": [
            {
                "id": "879",
                "name": "Ranking Model Improvements",
                "owner": "alice",
                "layer": "ranking",
                "traffic_pct": 40,
                "arms": {"control": {"model": "ctr_v41"}, "test": {"model": "ctr_v42"}},
                "targeting": {"country": ["US", "BR"]},
            },
            {
                "id": "880",
                "name": "Second",
                "owner": "bob",
                "layer": "ranking",
                "traffic_pct": 30,
                "arms": {"control": {"weight": 1}, "test": {"weight": 3}},
            },
        ],
    }


def problem(data: dict[str, Any], world: World | None = None, **kw: Any) -> ConfigError:
    """The first error of a document, whether pydantic or whole-world validation finds it."""
    with pytest.raises(ConfigError) as err:
        validate_file(parse_experiment_file(data), world, **kw)
    return err.value


def test_the_base_document_and_the_example_file_are_valid() -> None:
    ranges = validate_file(parse_experiment_file(base()))
    assert ranges == {"879": (0.0, 40.0), "880": (40.0, 70.0)}
    example = load_experiment_file(EXAMPLE)
    assert check_file(example) == []
    assert len(example.experiments) == 4


@pytest.mark.parametrize("weight", [-1, 0, math.inf, math.nan, "heavy"])
def test_arm_weight(weight: object) -> None:
    data = base()
    data["experiments"][1]["arms"]["test"]["weight"] = weight
    err = problem(data)
    assert err.field == "experiments[1].arms.test.weight"
    assert err.value == weight or (isinstance(weight, float) and math.isnan(err.value))


def test_layer_over_allocated_within_the_file() -> None:
    data = base()
    data["experiments"][1]["traffic_pct"] = 70
    err = problem(data)
    assert (err.field, err.value) == ("experiments[1].traffic_pct", 70)
    assert "over-allocated" in err.message and "40 % in use" in err.message


def test_layer_over_allocated_by_stored_experiments() -> None:
    data = base()
    data["experiments"] = data["experiments"][:1]
    from lifecycle.validation import Occupied

    world = World(
        layers={"ranking": Layer(id="ranking")},
        models={
            "ctr_v41": {"1": ModelEntry(id="ctr_v41")},
            "ctr_v42": {"1": ModelEntry(id="ctr_v42")},
        },
        experiment_ids=frozenset({"700"}),
        occupied={"ranking": [Occupied("700", 0.0, 80.0)]},
    )
    err = problem(data, world)
    assert (err.field, err.value) == ("experiments[0].traffic_pct", 40)
    # Enough room in total but not in one piece is refused too, naming the same field.
    world = World(
        layers=world.layers,
        models=world.models,
        occupied={"ranking": [Occupied("a", 0, 30), Occupied("b", 60, 90)]},
    )
    err = problem(data, world)
    assert err.field == "experiments[0].traffic_pct" and "contiguous" in err.message


def test_unknown_model_id() -> None:
    data = base()
    data["experiments"][0]["arms"]["test"]["model"] = "ctr_v99"
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].arms.test.model", "ctr_v99")


def test_a_model_in_the_stored_registry_is_known() -> None:
    data = base()
    data["models"] = []
    world = World(models={"ctr_v41": {"1": ModelEntry(id="ctr_v41")}})
    err = problem(data, world)
    assert (err.field, err.value) == ("experiments[0].arms.test.model", "ctr_v42")


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (lambda d: d["experiments"][1].update(id="879"), "experiments[1].id", "879"),
        (lambda d: d["layers"].append({"id": "ranking"}), "layers[1].id", "ranking"),
        (lambda d: d["models"].append({"id": "ctr_v41"}), "models[2].id", "ctr_v41"),
    ],
)
def test_duplicate_ids(mutate: Any, field: str, value: str) -> None:
    data = base()
    mutate(data)
    err = problem(data)
    assert (err.field, err.value) == (field, value)
    assert "duplicate" in err.message


def test_an_experiment_id_that_is_stored_already() -> None:
    world = World(layers={"ranking": Layer(id="ranking")}, experiment_ids=frozenset({"880"}))
    err = problem(base(), world)
    assert (err.field, err.value) == ("experiments[1].id", "880")


def test_a_stored_layer_redefined_with_another_salt() -> None:
    data = base()
    data["layers"][0]["salt"] = "new-salt"
    err = problem(data, World(layers={"ranking": Layer(id="ranking")}))
    assert (err.field, err.value) == ("layers[0].salt", "new-salt")


def test_targeting_unknown_property_and_value() -> None:
    data = base()
    data["experiments"][0]["targeting"] = {"planet": ["mars"]}
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].targeting.planet", "planet")
    data["experiments"][0]["targeting"] = {"country": ["US", "XX"], "platform": ["ios"]}
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].targeting.country[1]", "XX")
    data["experiments"][0]["targeting"] = {"platform": ["ios", "symbian"]}
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].targeting.platform[1]", "symbian")


def test_targeting_vocabulary_is_configurable() -> None:
    data = base()
    data["experiments"][0]["targeting"] = {"planet": ["mars"], "app_version": ["9.1"]}
    vocabulary = make_vocabulary({"planet": ["mars", "venus"], "app_version": []})
    validate_file(parse_experiment_file(data), vocabulary=vocabulary)  # [] allows any value
    data["experiments"][0]["targeting"] = {"planet": ["pluto"]}
    err = problem(data, vocabulary=vocabulary)
    assert (err.field, err.value) == ("experiments[0].targeting.planet[0]", "pluto")


def test_rollout_stages_must_increase() -> None:
    data = base()
    data["experiments"][0]["rollout"] = {
        "stages": [{"percent": 5}, {"percent": 50}, {"percent": 25}, {"percent": 100}]
    }
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].rollout.stages[2].percent", 25.0)
    data["experiments"][0]["rollout"] = {"stages": [{"percent": 0}]}
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].rollout.stages[0].percent", 0)


def test_unknown_guardrail_metric() -> None:
    data = base()
    data["experiments"][1]["guardrails"] = [{"metric": "ctr"}, {"metric": "happiness"}]
    err = problem(data)
    assert (err.field, err.value) == ("experiments[1].guardrails[1].metric", "happiness")


def test_duplicate_guardrail_metric() -> None:
    data = base()
    data["experiments"][1]["guardrails"] = [{"metric": "ctr"}, {"metric": "ctr"}]
    err = problem(data)
    assert (err.field, err.value) == ("experiments[1].guardrails[1].metric", "ctr")


def test_owner_missing_or_blank() -> None:
    data = base()
    del data["experiments"][1]["owner"]
    err = problem(data)
    assert (err.field, err.value) == ("experiments[1].owner", None)
    assert "missing" in err.message
    data = base()
    data["experiments"][0]["owner"] = "   "
    err = problem(data)
    assert (err.field, err.value) == ("experiments[0].owner", "   ")


@pytest.mark.parametrize(
    ("mutate", "field", "value"),
    [
        (lambda e: e.update(layer="nope"), "experiments[0].layer", "nope"),
        (lambda e: e.update(control="baseline"), "experiments[0].control", "baseline"),
        (lambda e: e.update(arms={"control": {}}), "experiments[0].arms", ["control"]),
        (lambda e: e.update(colour="red"), "experiments[0].colour", "red"),
        (lambda e: e.update(traffic_pct=150), "experiments[0].traffic_pct", 150),
        (lambda e: e.update(id="bad id!"), "experiments[0].id", "bad id!"),
        (lambda e: e["arms"]["test"].update(ad_load=-2), "experiments[0].arms.test.ad_load", -2),
        (lambda e: e.update(forced={"7": "ghost"}), "experiments[0].forced.7", "ghost"),
    ],
)
def test_other_rules_name_field_and_value(mutate: Any, field: str, value: Any) -> None:
    data = base()
    mutate(data["experiments"][0])
    err = problem(data)
    assert (err.field, err.value) == (field, value)
    assert field in str(err) and repr(value) in str(err)


def test_every_problem_is_reported_in_file_order() -> None:
    data = base()
    data["experiments"][0]["arms"]["test"]["model"] = "ctr_v99"
    data["experiments"][0]["targeting"] = {"country": ["XX"]}
    data["experiments"][1]["traffic_pct"] = 90
    fields = [p.field for p in check_file(parse_experiment_file(data))]
    assert fields == [
        "experiments[0].arms.test.model",
        "experiments[0].targeting.country[0]",
        "experiments[1].traffic_pct",
    ]


def test_files_load_from_yaml_and_json(tmp_path: Path) -> None:
    as_json = tmp_path / "e.json"
    as_json.write_text(json.dumps(base()))
    assert load_experiment_file(as_json).experiments[0].id == "879"
    bad = copy.deepcopy(base())
    bad["experiments"][1]["arms"]["test"]["weight"] = -3
    as_yaml = tmp_path / "e.yaml"
    import yaml

    as_yaml.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        load_experiment_file(as_yaml)
    assert (err.value.field, err.value.value) == ("experiments[1].arms.test.weight", -3)
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [\n")
    with pytest.raises(ConfigError) as err:
        load_experiment_file(broken)
    assert err.value.value == str(broken)
    with pytest.raises(ConfigError) as err:
        load_experiment_file(tmp_path / "missing.yaml")
    assert err.value.field == "file"
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n")
    with pytest.raises(ConfigError):
        load_experiment_file(not_a_mapping)
