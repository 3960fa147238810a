"""The builder's form: its fields, the templates it starts from, and its errors per field.

The form is flat HTML (no script needed): four arm rows, targeting as ``country=US,BR;
platform=ios``, rollout stages as ``5:60, 25:60, 100:60`` (percent : minimum minutes), one
checkbox and tolerance per guardrail. :func:`experiment_from_form` turns it into the document
lifecycle validates, and every problem comes back as a :class:`~tools.errors.ConfigError` whose
dotted path (``experiments[0].arms.test.model``) names the form field it is shown beside
(:func:`field_of`). Validation itself is lifecycle's own: the pydantic models of
:mod:`lifecycle.config` and the whole-world checks of :mod:`lifecycle.validation`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, assert_never

from lifecycle.config import GUARDRAIL_METRICS, ExperimentFile
from lifecycle.validation import parse_experiment_file
from tools.errors import ConfigError, ConfigProblems

__all__ = [
    "ARM_ROWS",
    "FIELDS",
    "TEMPLATES",
    "TemplateName",
    "experiment_from_form",
    "field_of",
    "template_form",
]

ARM_ROWS = 4
FIELDS = (
    "id",
    "name",
    "description",
    "owner",
    "layer",
    "traffic_pct",
    "arms",
    "control",
    "targeting",
    "rollout",
    "on_harm",
    "guardrails",
    "mde",
)
"""Form fields an error can be shown beside, in page order."""

TemplateName = Literal["ranking", "ad_load", "aa"]
TEMPLATES: dict[TemplateName, str] = {
    "ranking": "Ranking-model test: a candidate model against production, revenue guarded.",
    "ad_load": "Ad-load test: more ads per page against today's load, revenue and CTR guarded.",
    "aa": "A/A test: the same model in both arms, to check allocation and metrics (SRM).",
}
_STAGE = re.compile(r"^\s*([0-9.]+)\s*(?::\s*([0-9]+))?\s*$")


@dataclass(frozen=True)
class _Arm:
    name: str
    weight: str
    model: str
    ad_load: str


def _arms(form: Mapping[str, str]) -> list[_Arm]:
    out = []
    for i in range(ARM_ROWS):
        arm = _Arm(
            name=form.get(f"arm_name_{i}", "").strip(),
            weight=form.get(f"arm_weight_{i}", "").strip(),
            model=form.get(f"arm_model_{i}", "").strip(),
            ad_load=form.get(f"arm_ad_load_{i}", "").strip(),
        )
        if arm.name or arm.model or arm.ad_load:
            out.append(arm)
    return out


def _number(text: str) -> float | str:
    """A number typed in a field, or the text itself (lifecycle then names the bad value)."""
    try:
        return float(text)
    except ValueError:
        return text


def _targeting(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in re.split(r"[;\n]", text):
        if not part.strip():
            continue
        prop, sep, values = part.partition("=")
        if not sep or not prop.strip():
            raise ConfigError("targeting", part.strip(), "write property=value,value (e.g. US)")
        out[prop.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return out


def _stages(text: str) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        found = _STAGE.match(part)
        if found is None:
            raise ConfigError(
                "rollout", part.strip(), "write stages as percent:minutes, e.g. 5:60, 100:60"
            )
        stage: dict[str, Any] = {"percent": float(found.group(1))}
        if found.group(2) is not None:
            stage["min_minutes"] = int(found.group(2))
        stages.append(stage)
    return stages


def experiment_from_form(form: Mapping[str, str]) -> ExperimentFile:
    """The experiment file the form describes, validated by lifecycle's models.

    Args:
        form: The submitted fields.

    Raises:
        ConfigError: Every problem (a :class:`ConfigProblems` when several), each naming its
            field's path.
    """
    problems: list[ConfigError] = []
    arms: dict[str, dict[str, Any]] = {}
    for k, row in enumerate(_arms(form)):
        arm: dict[str, Any] = {"weight": _number(row.weight or "1")}
        if row.model:
            arm["model"] = row.model
        if row.ad_load:
            arm["ad_load"] = _number(row.ad_load)
        arms[row.name or f"arm{k}"] = arm
    guardrails = []
    for metric in GUARDRAIL_METRICS:
        if form.get(f"guardrail_{metric}"):
            tolerance = form.get(f"max_regression_{metric}", "").strip()
            entry: dict[str, Any] = {"metric": metric}
            if tolerance:
                entry["max_regression"] = _number(tolerance)
            guardrails.append(entry)
    experiment: dict[str, Any] = {
        "id": form.get("id", "").strip(),
        "name": form.get("name", "").strip(),
        "description": form.get("description", "").strip(),
        "owner": form.get("owner", "").strip(),
        "layer": form.get("layer", "").strip(),
        "traffic_pct": _number(form.get("traffic_pct", "").strip()),
        "arms": arms,
        "control": form.get("control", "").strip() or "control",
        "guardrails": guardrails,
    }
    rollout: dict[str, Any] = {"on_harm": form.get("on_harm", "pause_and_alert")}
    try:
        experiment["targeting"] = _targeting(form.get("targeting", ""))
    except ConfigError as exc:
        problems.append(ConfigError(f"experiments[0].{exc.field}", exc.value, exc.message))
    try:
        stages = _stages(form.get("stages", ""))
        if stages:
            rollout["stages"] = stages
    except ConfigError as exc:
        problems.append(ConfigError(f"experiments[0].{exc.field}", exc.value, exc.message))
    experiment["rollout"] = rollout
    try:
        parsed = parse_experiment_file({"experiments": [experiment]})
    except ConfigProblems as exc:
        problems.extend(exc.problems)
    except ConfigError as exc:
        problems.append(exc)
    else:
        if not problems:
            return parsed
    raise problems[0] if len(problems) == 1 else ConfigProblems(problems)


def field_of(path: str) -> str:
    """The form field a problem's dotted path belongs to (``experiments[0].arms.x`` -> arms)."""
    rest = re.sub(r"^experiments\[\d+\]\.?", "", path)
    head = re.split(r"[.\[]", rest, maxsplit=1)[0] if rest else ""
    if head == "rollout" and "on_harm" in rest:
        return "on_harm"
    return head if head in FIELDS else "form"


def errors_by_field(problems: Sequence[ConfigError]) -> dict[str, list[str]]:
    """Each problem's message under the field it is shown beside (``form`` for the rest)."""
    out: dict[str, list[str]] = {}
    for p in problems:
        where = p.field.split("experiments[0].", 1)[-1]
        detail = f"{where}: {p.message}" if where not in FIELDS else p.message
        shown = "" if p.value is None else f" (got {p.value!r})"
        out.setdefault(field_of(p.field), []).append(f"{detail}{shown}")
    return out


def template_form(
    name: TemplateName, *, owner: str, layers: Sequence[str], models: Sequence[str]
) -> dict[str, str]:
    """The builder's fields filled in for a template.

    Args:
        name: Which template.
        owner: The signed-in user (the owner by default).
        layers: Layer ids (the first is proposed).
        models: Model ids of the registry (the first is control's, the last the candidate).
    """
    base = {
        "owner": owner,
        "layer": layers[0] if layers else "",
        "traffic_pct": "10",
        "control": "control",
        "stages": "5:60, 25:60, 50:60, 100:60",
        "on_harm": "pause_and_alert",
        "mde": "2",
        "guardrail_revenue_per_request": "on",
        "max_regression_revenue_per_request": "0.02",
        "guardrail_srm": "on",
        "arm_name_0": "control",
        "arm_weight_0": "1",
        "arm_name_1": "test",
        "arm_weight_1": "1",
    }
    first = models[0] if models else ""
    last = models[-1] if models else ""
    if name == "ranking":
        base |= {
            "name": "Ranking model candidate",
            "description": f"{last} against {first} on a share of the ranking layer.",
            "arm_model_0": first,
            "arm_model_1": last,
            "guardrail_fallback_rate": "on",
            "max_regression_fallback_rate": "0.05",
        }
    elif name == "ad_load":
        base |= {
            "name": "Ad load +10 %",
            "description": "Ten per cent more ads per page against today's load.",
            "arm_ad_load_0": "1.0",
            "arm_ad_load_1": "1.1",
            "guardrail_ctr": "on",
            "max_regression_ctr": "0.03",
        }
    elif name == "aa":
        base |= {
            "name": "A/A check",
            "description": "The same model in both arms: allocation and metric sanity.",
            "arm_model_0": first,
            "arm_model_1": first,
            "arm_name_1": "treatment",
            "stages": "100:60",
        }
    else:
        assert_never(name)
    return base
