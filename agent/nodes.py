"""The graph's nodes: each reads the state, does one step, and returns the fields it changes.

Order: intake → localize → plan → run_check (one per task, in parallel) → diagnose → report →
propose → approval (interrupt) → execute → verify → finish. Every node before the interrupt is
idempotent (proposals are upserts with stable ids; notifications fire once, after the write), and
the approval node only reads before it interrupts, so resuming re-runs nothing that acts. The
database, not the resume value, decides what was approved: execute acts only on mitigations whose
stored status is ``approved`` by an authorised user.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import Send, interrupt

from agent.coverage import (
    blind_spot,
    not_ruled_out,
    unexplained_shift,
    unknown_experiment,
    with_coverage,
)
from agent.deps import Deps
from agent.deterministic import DeterministicReasoner, cause_onset
from agent.followups import looks, settle, spent
from agent.localize import (
    elsewhere,
    localize,
    plan,
    run_task,
    shared_models,
    shared_suspect,
    utc,
)
from agent.mitigation import propose_for
from agent.models import (
    InvestigationStatus,
    InvestigationView,
    MitigationStatus,
    MitigationView,
    RootCause,
)
from agent.narrative import build_report
from agent.reasoning import Baseline, DiagnosisInput, guard
from agent.report import alert_series_plot, attribution_plot, check_plot, write_report
from agent.state import (
    CheckOutcome,
    CheckTask,
    Diagnosis,
    InvestigationState,
    Localization,
    Suspect,
    Window,
)
from agent.verify import measure_recovery
from tools.errors import RetryableError

__all__ = ["Nodes", "view_of"]

_log = logging.getLogger(__name__)


def _thread(config: RunnableConfig) -> str:
    return str(config["configurable"]["thread_id"])


def _verdicts(state: InvestigationState) -> list[tuple[str, str, str]]:
    own = {"global", f"experiment:{state.alert.experiment}"}
    out: list[tuple[str, str, str]] = []
    for o in state.outcomes:
        name = o.result.check if o.subject.key in own else f"{o.result.check}@{o.subject.key}"
        out.append((name, o.result.verdict, o.result.summary))
    return out


def _settled(state: InvestigationState) -> InvestigationStatus:
    """How an investigation ends: ``completed``, unless its checks could not see (DESIGN §5)."""
    if state.diagnosis is not None and state.diagnosis.conclusion != "conclusive":
        return state.diagnosis.conclusion
    return "completed"


def view_of(
    state: InvestigationState,
    mitigations: Sequence[MitigationView] = (),
    status: InvestigationStatus | None = None,
    report_markdown: str = "",
) -> InvestigationView:
    """The front doors' view of a graph state."""
    return InvestigationView(
        id=state.investigation_id,
        status=status or state.status,
        alert=state.alert,
        created_at=state.created_at,
        onset=state.onset,
        root_causes=list(state.diagnosis.causes) if state.diagnosis else [],
        mitigations=list(mitigations),
        verdicts=_verdicts(state),
        reasoner=state.diagnosis.reasoner if state.diagnosis else "deterministic",
        report_markdown=report_markdown,
        report_path=state.report_path,
        error=state.error,
    )


class Nodes:
    """The node functions, bound to their dependencies.

    Args:
        deps: Stores, playbooks, reasoner, checks, policy, notifier, clock.
    """

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self._fallback = DeterministicReasoner()

    # -- helpers -------------------------------------------------------------------------------

    def _toolbox(self, state: InvestigationState) -> Any:
        return self.deps.toolboxes.get(state.investigation_id, state.alert)

    def _save(self, state: InvestigationState, status: InvestigationStatus) -> InvestigationView:
        store = self.deps.store
        previous = store.get_investigation(state.investigation_id)
        view = view_of(
            state, store.mitigations_of(state.investigation_id), status, previous.report_markdown
        )
        store.save_investigation(view)
        return view

    def _render(self, state: InvestigationState, mitigations: Sequence[MitigationView]) -> str:
        """Write the report files and store the report; returns the HTML file's path."""
        assert state.localization is not None and state.diagnosis is not None
        deps = self.deps
        playbook = deps.playbooks.get(state.playbook)
        experiments = deps.catalog.experiments()
        model = build_report(
            state.investigation_id,
            state.alert,
            playbook,
            state.localization,
            state.outcomes,
            state.diagnosis,
            mitigations,
            experiments,
            state.onset,
        )
        model.plots = self._plots(state)
        markdown, html, path = write_report(
            deps.settings.reports_dir,
            state.investigation_id,
            model,
            history=deps.store.get_investigation(state.investigation_id),
        )
        view = view_of(
            state.model_copy(update={"report_path": str(path)}),
            mitigations,
            report_markdown=markdown,
        )
        deps.store.save_investigation(view, report_html=html)
        return str(path)

    def _plots(self, state: InvestigationState) -> dict[str, str]:
        assert state.localization is not None and state.diagnosis is not None
        loc = state.localization
        plots: dict[str, str] = {}
        try:
            frame = self._toolbox(state).metric_series(
                state.alert.metric, loc.baseline.start, loc.window.end, state.alert.experiment
            )
        except Exception as exc:  # a plot is not worth failing the report for; noted in logs
            _log.warning("alert metric series unavailable: %s", exc)
            frame = None
        scope = f"experiment {state.alert.experiment}" if state.alert.experiment else "all traffic"
        drawn = alert_series_plot(frame, state.alert.metric, state.onset, scope)
        if drawn:
            plots["alert"] = drawn
        top = state.diagnosis.causes[0] if state.diagnosis.causes else None
        failing = None
        if top is not None and top.cause != "none":
            failing = next(
                (
                    o
                    for o in state.outcomes
                    if o.result.check in top.evidence and o.result.verdict == "fail"
                ),
                None,
            )
        drawn = check_plot(failing)
        if drawn:
            plots["check"] = drawn
        attribution = next((o for o in loc.results if o.result.check == "attribution"), None)
        # The plot shows the alert metric's attribution (the first one run).
        drawn = attribution_plot(attribution)
        if drawn:
            plots["attribution"] = drawn
        return plots

    def _proposals(self, state: InvestigationState) -> list[MitigationView]:
        assert state.diagnosis is not None
        if state.diagnosis.conclusion != "conclusive":
            return []  # undecided (a rival cause still open, blind checks): nothing to act on
        return propose_for(
            state.investigation_id,
            state.diagnosis.causes,
            self.deps.playbooks.get(state.playbook),
            state.outcomes,
            self.deps.catalog.experiments(),
            self.deps.catalog.production_model(),
        )

    def _held(self, state: InvestigationState) -> list[MitigationView]:
        """The proposals diagnose put in the state (computed here for an older checkpoint)."""
        return state.proposals if state.proposals is not None else self._proposals(state)

    # -- nodes ---------------------------------------------------------------------------------

    def intake(self, state: InvestigationState) -> dict[str, Any]:
        """Pick the alert's playbook (a ConfigError for an uncovered metric)."""
        return {"playbook": self.deps.playbooks.for_metric(state.alert.metric).name}

    def localize(self, state: InvestigationState) -> dict[str, Any]:
        """Onset, window, suspects and where (nobody to suspect for an unknown experiment)."""
        catalog = self.deps.catalog
        if unknown_experiment(state.alert, catalog.experiments()) is not None:
            window = self.deps.playbooks.get(state.playbook).window
            end = utc(state.alert.fired_at)
            start = end - timedelta(minutes=window.lookback_minutes)
            base = start - timedelta(minutes=window.baseline_minutes)
            empty = Localization(
                window=Window(start=start, end=end), baseline=Window(start=base, end=start)
            )
            return {"localization": empty, "onset": None}
        loc = localize(
            state.alert,
            self.deps.playbooks.get(state.playbook),
            self._toolbox(state),
            production_model=catalog.production_model(),
            known_experiments=list(catalog.experiments()),
        )
        return {"localization": loc, "onset": loc.onset}

    def plan(self, state: InvestigationState) -> dict[str, Any]:
        """The checks to run."""
        assert state.localization is not None
        tasks = plan(self.deps.playbooks.get(state.playbook), state.localization)
        n_looks = looks(state.alert)
        return {"tasks": [t.model_copy(update={"looks": n_looks}) for t in tasks]}

    @staticmethod
    def fan_out(state: InvestigationState) -> list[Send] | str:
        """One ``run_check`` per task, in parallel (straight to diagnose when there are none)."""
        if not state.tasks:
            return "diagnose"
        return [Send("run_check", task) for task in state.tasks]

    def run_check(self, state: CheckTask, config: RunnableConfig) -> dict[str, Any]:
        """Run one check (``state`` is the task ``Send`` carried)."""
        view = self.deps.store.get_investigation(_thread(config))
        box = self.deps.toolboxes.get(view.id, view.alert)
        return {"outcomes": [spent(run_task(box, state), state.looks)]}

    def _widened(self, state: InvestigationState) -> tuple[Localization, list[CheckOutcome]]:
        """More subjects the findings point at, examined before the diagnosis.

        The production model when the alerted experiment's arms moved together (or its control
        alone: :func:`agent.localize.shared_suspect`); other experiments that moved them (the
        metric every arm moved, attributed: :func:`agent.localize.elsewhere`); and a model that
        a failing arm serves and another experiment's arm serves too
        (:func:`agent.localize.shared_models`), also for the subjects added here.
        """
        assert state.localization is not None
        playbook = self.deps.playbooks.get(state.playbook)
        catalog = self.deps.catalog
        production = catalog.production_model()
        experiments = catalog.experiments()
        arm_models = {e: dict(meta.models) for e, meta in experiments.items()}
        model = shared_suspect(
            state.alert, playbook, state.localization, state.outcomes, production
        )
        box = self._toolbox(state)
        others, attributed = elsewhere(
            state.alert, playbook, state.localization, state.outcomes, box, list(experiments)
        )
        loc = state.localization
        n_looks = looks(state.alert)
        added: list[Suspect] = []
        outcomes: list[CheckOutcome] = []
        batch = ([model] if model is not None else []) + others
        for _ in range(3):  # others serving a failing arm's model, then the model itself
            batch += shared_models(
                [*state.outcomes, *outcomes],
                arm_models,
                production,
                [*loc.suspects, *added, *batch],
            )
            if not batch:
                break
            tasks = plan(playbook, loc.model_copy(update={"suspects": batch}))
            outcomes += [spent(run_task(box, t), n_looks) for t in tasks]
            added += batch
            batch = []
        if not added:
            return loc, []
        suspects = [*loc.suspects]
        at = next((i for i, s in enumerate(suspects) if s.scope == "global"), len(suspects))
        suspects[at:at] = added
        return loc.model_copy(
            update={"suspects": suspects, "results": [*loc.results, *attributed]}
        ), outcomes

    def diagnose(self, state: InvestigationState) -> dict[str, Any]:
        """Rank causes; an LLM's causes stand only if they cite failing checks.

        When a check found every arm of the alerted experiment shifted at once, the production
        model (which its arms share) is checked first (:func:`agent.localize.shared_suspect`).
        """
        assert state.localization is not None
        localization, widened = self._widened(state)
        state = state.model_copy(
            update={"localization": localization, "outcomes": [*state.outcomes, *widened]}
        )
        given = DiagnosisInput(
            alert=state.alert,
            playbook=self.deps.playbooks.get(state.playbook),
            localization=localization,
            outcomes=list(state.outcomes),
            experiments=self.deps.catalog.experiments(),
            toolbox=self._toolbox(state),
        )
        diagnosis = self._diagnose(given)
        blind = (
            unknown_experiment(state.alert, given.experiments)
            or blind_spot(
                state.alert, localization, state.outcomes, given.toolbox, self.deps.clock()
            )
            or unexplained_shift(state.alert, state.outcomes)
        )
        diagnosis = with_coverage(diagnosis, blind, not_ruled_out(state.alert, state.outcomes))
        outcomes = list(state.outcomes) + list(diagnosis.extra)
        onset = state.onset
        top = diagnosis.causes[0] if diagnosis.causes else None
        if top is not None and top.cause != "none":
            onset = cause_onset(top, outcomes) or onset
        onset = utc(onset) if onset is not None else None
        update: dict[str, Any] = {
            "diagnosis": diagnosis,
            "onset": onset,
            "localization": localization,
            "outcomes": [*widened, *diagnosis.extra],
            "proposals": self._proposals(
                state.model_copy(update={"diagnosis": diagnosis, "outcomes": outcomes})
            ),
        }
        if diagnosis.conclusion == "failed":
            update["error"] = diagnosis.reason
        return update

    def _diagnose(self, given: DiagnosisInput) -> Diagnosis:
        reasoner = self.deps.reasoner
        try:
            diagnosis = reasoner.diagnose(given)
        except Exception as exc:  # any reasoner failure falls back, and the report says so
            _log.exception("reasoner %s failed", getattr(reasoner, "name", reasoner))
            fallback = self._fallback.diagnose(given)
            note = f"The {getattr(reasoner, 'name', 'configured')} reasoner failed ({exc}); "
            note += "these causes come from the deterministic rules."
            return fallback.model_copy(update={"notes": [*fallback.notes, note]})
        if isinstance(reasoner, DeterministicReasoner):
            return diagnosis  # its playbook rules are the admissibility rules (warned candidates)
        diagnosis = guard(diagnosis, given)  # grounded causes only; see agent.reasoning
        if not diagnosis.causes and isinstance(reasoner, Baseline):
            note = f"The {diagnosis.reasoner} baseline named no admissible cause."
            none = RootCause(cause="none", confidence=0.5, explanation=note)
            return diagnosis.model_copy(
                update={"causes": [none], "notes": [*diagnosis.notes, note]}
            )
        if not diagnosis.causes:
            fallback = self._fallback.diagnose(given)
            note = f"The {diagnosis.reasoner} reasoner named no admissible cause; "
            note += "the deterministic result stands."
            diagnosis = fallback.model_copy(
                update={"notes": [*diagnosis.notes, note], "extra": diagnosis.extra}
            )
        return diagnosis

    def report(self, state: InvestigationState) -> dict[str, Any]:
        """Write the report (with the proposal it will make) and store it."""
        return {"report_path": self._render(state, self._held(state))}

    def propose(self, state: InvestigationState) -> dict[str, Any]:
        """Store the proposals (idempotent) and tell the notifier."""
        proposals = self._held(state)
        for m in proposals:
            self.deps.store.add_mitigation(m)
        ids = [m.id for m in proposals]
        if ids:
            status: InvestigationStatus = "awaiting_approval"
            updated = state.model_copy(update={"mitigation_ids": ids})
            self.deps.notifier.awaiting_approval(self._save(updated, status))
        else:
            status = _settled(state)
        return {"mitigation_ids": ids, "status": status}

    @staticmethod
    def after_propose(state: InvestigationState) -> str:
        """Wait for approval when something was proposed."""
        return "approval" if state.mitigation_ids else "finish"

    def approval(self, state: InvestigationState) -> dict[str, Any]:
        """Pause until every proposal is decided; the stored decision is what counts."""
        store = self.deps.store
        pending = [i for i in state.mitigation_ids if store.get_mitigation(i).status == "proposed"]
        if not pending:
            return {}
        # The resume value only wakes the graph: after_approval reads the stored decisions.
        interrupt({"investigation_id": state.investigation_id, "mitigations": pending})
        return {}

    def after_approval(self, state: InvestigationState) -> str:
        """Execute what is approved; wait again while anything is undecided."""
        statuses = [self.deps.store.get_mitigation(i).status for i in state.mitigation_ids]
        if "proposed" in statuses:
            return "approval"
        if "approved" in statuses or "executing" in statuses:
            return "execute"  # executing: a crash came between deciding to act and recording it
        return "finish"

    def execute(self, state: InvestigationState) -> dict[str, Any]:
        """Execute each approved mitigation exactly once, through the experiment core.

        A mitigation left ``executing`` (this node crashed after the decision to act was stored)
        is resumed with the same idempotency key, which lifecycle records at most once. A
        retryable failure (a busy store) propagates: the graph stays before this node and the
        recovery sweep runs it again; a terminal one marks the mitigation failed.
        """
        done: list[str] = []
        errors: list[str] = []
        for mid in state.mitigation_ids:
            if self.deps.store.get_mitigation(mid).status not in ("approved", "executing"):
                continue
            try:
                view, acted = self.deps.executor.execute(mid, resume_after_s=0.0)
            except RetryableError:
                raise
            except Exception as exc:  # recorded on the mitigation and the investigation
                _log.warning("mitigation %s failed: %s", mid, exc)
                errors.append(f"mitigation {mid}: {exc}")
                continue
            if acted:  # the executor told the notifier
                done.append(mid)
            elif view.status in ("executed", "verified") and mid not in state.executed:
                done.append(mid)  # completed by another process; still verified here
        update: dict[str, Any] = {"executed": [*state.executed, *done]}
        if errors:
            update["error"] = "; ".join(errors)
        return update

    def verify(self, state: InvestigationState) -> dict[str, Any]:
        """Judge recovery after each executed mitigation."""
        for mid in state.executed:
            self.verify_one(state, mid)
        return {}

    def verify_one(self, state: InvestigationState, mitigation_id: str) -> MitigationView:
        """Re-read the cause's metric after the action and record whether it recovered."""
        store = self.deps.store
        current = store.get_mitigation(mitigation_id)
        acted_at = store.detail(mitigation_id).get("acted_at")
        top = state.diagnosis.causes[0] if state.diagnosis and state.diagnosis.causes else None
        playbook = self.deps.playbooks.get(state.playbook)
        rule = playbook.rule(top.cause) if top is not None else None
        if (
            current.status not in ("executed", "verified")
            or acted_at is None
            or rule is None
            or rule.verify_metric is None
        ):
            return current
        onset = state.onset or (state.localization.window.start if state.localization else None)
        if onset is None:
            return current
        try:
            box = self.deps.toolboxes.fresh(state.alert)
            found = measure_recovery(box, rule.verify_metric, onset, acted_at, playbook.window)
        except Exception as exc:  # acting and verifying are separate outcomes: retried later
            _log.warning("verification of %s pending: %s", mitigation_id, exc)
            attempts = int(store.detail(mitigation_id).get("verification_attempts") or 0) + 1
            store.merge_detail(
                mitigation_id,
                {
                    "verification_pending": f"{type(exc).__name__}: {exc}",
                    "verification_attempts": attempts,
                },
            )
            return store.get_mitigation(mitigation_id)
        detail: dict[str, Any] = {"verification": found.as_dict(), "verification_pending": None}
        if state.alert.metric != rule.verify_metric and state.alert.metric != "srm":
            try:
                also = measure_recovery(box, state.alert.metric, onset, acted_at, playbook.window)
                detail["alert_metric"] = also.as_dict()
            except Exception as exc:  # the alert metric is context only; its absence is noted
                detail["alert_metric"] = {"error": str(exc)}
        new: MitigationStatus = "verified" if found.recovered else "executed"
        store.transition(
            mitigation_id, ["executed", "verified"], new, recovered=found.recovered, detail=detail
        )
        view = store.get_mitigation(mitigation_id)
        if found.recovered is not None:
            self.deps.notifier.recovery_verified(view)
        return view

    def finish(self, state: InvestigationState) -> dict[str, Any]:
        """Re-render the report with where each mitigation stands; the investigation is done."""
        mitigations = self.deps.store.mitigations_of(state.investigation_id)
        # An inconclusive end is watched while follow-ups remain (agent.followups).
        done = settle(self.deps, state.model_copy(update={"status": _settled(state)}))
        path = self._render(done, mitigations) if state.diagnosis else state.report_path
        final = done.model_copy(update={"report_path": path})
        self.deps.notifier.investigation_finished(self._save(final, done.status))
        return {"status": done.status, "report_path": path}
