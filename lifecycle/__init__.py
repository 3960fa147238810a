"""The experiment core: configuration, allocation, rollout, kill switch, audit log, monitors.

Nothing outside :mod:`lifecycle` changes experiment state; everything that does goes through
:class:`ExperimentService`.
"""

from lifecycle.allocation import (
    BUCKETS,
    ConfigSnapshot,
    KillScope,
    Status,
    assign,
    assign_many,
    assignments,
    build_snapshot,
    is_enabled,
)
from lifecycle.allocator import Allocator
from lifecycle.config import (
    GUARDRAIL_METRICS,
    Arm,
    Experiment,
    ExperimentFile,
    Guardrail,
    Layer,
    ModelEntry,
    RolloutPlan,
    RolloutStage,
)
from lifecycle.gate import (
    ArmSummary,
    GateConfig,
    GateInput,
    GateReport,
    GuardrailResult,
    SrmResult,
    check_guardrail,
    confidence_sequence,
    evaluate_gate,
    srm_test,
)
from lifecycle.remote import RemoteAllocator, RemoteHealth
from lifecycle.rollout import RolloutState, transition
from lifecycle.service import ExperimentService, NoteAction
from lifecycle.settings import LifecycleSettings
from lifecycle.shadow import ShadowArm, shadow_arms
from lifecycle.validation import (
    DEFAULT_VOCABULARY,
    check_file,
    load_experiment_file,
    parse_experiment_file,
    validate_file,
)
from lifecycle.views import AdvanceResult, AuditEntry, ExperimentView, KillSwitchView, ModelView

__all__ = [
    "BUCKETS",
    "DEFAULT_VOCABULARY",
    "GUARDRAIL_METRICS",
    "AdvanceResult",
    "Allocator",
    "Arm",
    "ArmSummary",
    "AuditEntry",
    "ConfigSnapshot",
    "Experiment",
    "ExperimentFile",
    "ExperimentService",
    "ExperimentView",
    "GateConfig",
    "GateInput",
    "GateReport",
    "Guardrail",
    "GuardrailResult",
    "KillScope",
    "KillSwitchView",
    "Layer",
    "LifecycleSettings",
    "ModelEntry",
    "ModelView",
    "NoteAction",
    "RemoteAllocator",
    "RemoteHealth",
    "RolloutPlan",
    "RolloutStage",
    "RolloutState",
    "ShadowArm",
    "SrmResult",
    "Status",
    "assign",
    "assign_many",
    "assignments",
    "build_snapshot",
    "check_file",
    "check_guardrail",
    "confidence_sequence",
    "evaluate_gate",
    "is_enabled",
    "load_experiment_file",
    "parse_experiment_file",
    "shadow_arms",
    "srm_test",
    "transition",
    "validate_file",
]
