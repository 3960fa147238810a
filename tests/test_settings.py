"""Settings split by package and composed at the root: each package reads only its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.settings import Settings
from lifecycle.service import ExperimentService
from lifecycle.settings import LifecycleSettings
from tools.errors import ConfigError
from tools.settings import ToolSettings

ROOT = Path(__file__).resolve().parents[1]


def _own(cls: type[ToolSettings], base: type[ToolSettings] | None) -> set[str]:
    fields = set(cls.model_fields)
    return fields - set(base.model_fields) if base is not None else fields


def test_the_root_composes_every_package_and_loses_no_setting() -> None:
    tools = _own(ToolSettings, None)
    lifecycle = _own(LifecycleSettings, ToolSettings)
    agent = _own(Settings, LifecycleSettings)
    assert {"telemetry_url", "telemetry_tables", "telemetry_columns"} <= tools
    assert {"state_url", "targeting_vocabulary", "risk_red_share"} <= lifecycle
    assert {"llm_base_url", "slack_bot_token", "console_secret", "followup_minutes"} <= agent
    assert tools | lifecycle | agent == set(Settings.model_fields)
    # Every setting documents itself: docs/settings.md is printed from these descriptions.
    assert all(field.description for field in Settings.model_fields.values())


@pytest.mark.parametrize(
    ("path", "forbidden"),
    [
        ("tools/settings.py", ("lifecycle", "agent", "evals")),
        ("lifecycle/settings.py", ("agent", "evals")),
        ("lifecycle/service.py", ("agent", "evals")),
        ("lifecycle/controller.py", ("agent", "evals")),
    ],
)
def test_a_package_imports_no_settings_from_above(path: str, forbidden: tuple[str, ...]) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    imported = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    ]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] in forbidden]


def test_package_settings_read_the_same_variables_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("VIGIL_TARGETING_VOCABULARY", '{"tier": ["gold"]}')
    monkeypatch.setenv("VIGIL_LLM_MODEL", "m")  # the agent's: ignored below the root
    lifecycle = LifecycleSettings()
    root = Settings()
    assert lifecycle.state_url == root.state_url == f"sqlite:///{tmp_path / 'h' / 'state.db'}"
    assert ToolSettings().telemetry_url == root.telemetry_url
    assert root.telemetry_url == f"duckdb:///{tmp_path / 'h' / 'telemetry.duckdb'}"
    assert root.checkpoint_url == str(tmp_path / "h" / "checkpoints.db")
    assert root.reports_dir == tmp_path / "h" / "reports"
    assert lifecycle.targeting_vocabulary == {"tier": ["gold"]} and root.llm_model == "m"
    assert not hasattr(lifecycle, "llm_model")
    # The experiment core is built from its own settings, the root's are one of them.
    with ExperimentService.from_settings(lifecycle) as svc:
        assert svc.list() == []


def test_the_telemetry_mapping_is_validated_with_the_field_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIGIL_TELEMETRY_COLUMNS", '{"requests": {"tss": "t"}}')
    with pytest.raises(ConfigError, match=r"telemetry_columns\.requests\.tss"):
        ToolSettings().telemetry_schema()
    monkeypatch.setenv("VIGIL_TELEMETRY_COLUMNS", '{"requests": {"ts": "t"}}')
    assert ToolSettings().telemetry_schema().table("requests").names["ts"] == "t"
