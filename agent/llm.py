"""The LLM reasoner: an OpenAI-compatible chat with tool calls over the same checks.

Any endpoint speaking the Chat Completions API works (OpenAI, Azure, vLLM, Ollama, llama.cpp
server). The model sees the alert and the check results as quoted, redacted data blocks, compact
(:mod:`agent.prompts`), and the candidate causes: those the guard lets stand
(:func:`~agent.reasoning.candidate_causes`). Its answer is asked for in a schema narrowed to them,
as a forced ``submit_diagnosis`` call or a ``response_format`` (:func:`answer_format`, by the
endpoint's kind), so a server that constrains replies cannot write an answer Vigil would reject;
the answer is validated by pydantic against the same schema. With tools on (:func:`offers_tools`:
remote endpoints by default) it may first run more checks (tools generated from the Toolbox's
signatures, :mod:`agent.llm_tools`). Small models that write their tool
calls as text (``<tool_call>`` tags, fenced or bare JSON) are read too
(:func:`~agent.llm_tools.parse_text_calls`). It has no tool that acts: mitigations follow from the
playbook and a human's approval, never from the model.

Requests ask for ``temperature`` 0 (settings), a ``seed`` and at most ``llm_reply_tokens`` per
reply. The token budget counts the tokens each step adds, from the server's ``usage``: the prompt
tokens the server had cached (``prompt_tokens_details.cached_tokens``, or, when it does not say,
the conversation it already saw) are not counted again. Timeouts follow the endpoint's kind: a
loopback or private host (a local CPU model) gets ``llm_local_timeout_s``.

Failure is never silent. Rate limits, 5xx and timeouts are retried with exponential backoff
(tenacity); an endpoint that stays down (:class:`LLMOutage`, retryable), a refusal, a reply that
stays malformed, or a spent step or token budget (:class:`LLMRefused`, terminal) falls back to the
:class:`~agent.deterministic.DeterministicReasoner`, and the report says so. The graph then keeps
only causes grounded in a failing check (:func:`agent.reasoning.guard`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, assert_never
from urllib.parse import urlparse

import openai
from openai import OpenAI
from pydantic import ValidationError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from agent.deps import Observer
from agent.deterministic import DeterministicReasoner
from agent.llm_tools import (
    ToolSpec,
    check_tools,
    compact_result,
    parse_text_calls,
    quote_data,
    redact,
)
from agent.models import RootCause
from agent.prompts import (
    SUBMIT,
    AnswerMode,
    LLMCause,
    LLMDiagnosis,
    answer_schema,
    estimate_tokens,
    first_messages,
    one_line,
    tool_schemas,
)
from agent.reasoning import DiagnosisInput, Reasoner, candidate_causes
from agent.settings import Settings
from agent.state import CheckOutcome, Diagnosis, Suspect
from tools.errors import ConfigError, RetryableError, TerminalError, VigilError

__all__ = [
    "LLMBudgetSpent",
    "LLMCause",
    "LLMDiagnosis",
    "LLMOutage",
    "LLMReasoner",
    "LLMRefused",
    "LLMUnavailable",
    "LLMUsage",
    "answer_format",
    "endpoint_timeout",
    "offers_tools",
]

_log = logging.getLogger(__name__)

_FORCED = {"type": "function", "function": {"name": SUBMIT}}
_RETRYABLE = (
    openai.RateLimitError,
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.InternalServerError,
)


class LLMUnavailable(VigilError):
    """The LLM gave no usable diagnosis; the deterministic result stands.

    Raised as one of its two kinds: :class:`LLMOutage` (retryable: the endpoint was down, timed
    out or rate-limited through every retry) or :class:`LLMRefused` (terminal: a 4xx answer, an
    empty reply, or a spent token or step budget; the same request fails again).
    """


class LLMOutage(LLMUnavailable, RetryableError):
    """The endpoint stayed unreachable, timed out or rate-limited through every retry."""


class LLMRefused(LLMUnavailable, TerminalError):
    """The endpoint refused the request (4xx, no answer) or the budget was spent."""


class LLMBudgetSpent(LLMRefused):
    """The step or token budget ran out without a valid diagnosis (terminal: the same
    conversation spends it again)."""


@dataclass(frozen=True)
class LLMUsage:
    """What one investigation's conversation cost, for the eval's figures.

    Attributes:
        steps: Requests answered by the endpoint.
        tokens: New tokens over all steps (the budget's count).
        first_prompt_tokens: The first request's prompt tokens as the server counted them (the
            estimate when it did not say).
        seconds: Wall time of the conversation.
        outcome: ``answered`` (a valid diagnosis) or the error's class name.
        text_calls: Tool calls read from the reply text rather than structured ``tool_calls``.
        choices: Causes the answer could choose from (the candidates, ``none`` included); 0
            when the answer was not narrowed to candidates.
        answer_format: How the answer was asked for (``tool``, ``json_object``,
            ``json_schema``).
    """

    steps: int
    tokens: int
    first_prompt_tokens: int
    seconds: float
    outcome: str
    text_calls: int = 0
    choices: int = 0
    answer_format: str = "tool"


def _is_local(host: str) -> bool:
    if host in ("localhost", "") or host.endswith((".localhost", ".local", ".internal")):
        return True
    if "." not in host and ":" not in host:
        return True  # a bare service name (docker compose, k8s short name): a nearby server
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def endpoint_timeout(settings: Settings) -> float:
    """Seconds one call may take: ``llm_timeout_s`` if set, else by the endpoint's kind.

    A loopback, private-network or bare-name host (a model served nearby, often on CPU, whose
    first answer can take minutes) gets ``llm_local_timeout_s``; any other host
    ``llm_remote_timeout_s``.
    """
    if settings.llm_timeout_s is not None:
        return settings.llm_timeout_s
    host = urlparse(settings.llm_base_url or "").hostname or ""
    return settings.llm_local_timeout_s if _is_local(host) else settings.llm_remote_timeout_s


def _local(settings: Settings) -> bool:
    return _is_local(urlparse(settings.llm_base_url or "").hostname or "")


def answer_format(settings: Settings) -> Literal["tool", "json_object", "json_schema"]:
    """How the answer is asked for: ``llm_answer_format``, or by the endpoint's kind when auto.

    A local server (llama.cpp's ``llama-server``, ``llama-cpp-python``) gets ``json_object``:
    ``response_format: {"type": "json_object", "schema": ...}``, which both compile to a grammar.
    Any other endpoint gets ``tool``: a forced ``submit_diagnosis`` call, which OpenAI and vLLM
    constrain to the tool's parameters.
    """
    chosen = settings.llm_answer_format
    if chosen == "auto":
        return "json_object" if _local(settings) else "tool"
    return chosen


def offers_tools(settings: Settings) -> bool:
    """Whether the check tools are offered before the answer (``llm_tools``; auto: remote only).

    The planned checks have already run on every suspect when the reasoner is asked, and their
    results are in the first prompt; a small local model calling a tool re-runs one of them
    (and each step costs a CPU server minutes), so a local endpoint is asked for the answer at
    once.
    """
    chosen = settings.llm_tools
    if chosen == "auto":
        return not _local(settings)
    return chosen == "on"


def _new_tokens(usage: Any, previous: int) -> int | None:
    """Tokens a step added: prompt tokens not cached by the server, plus the reply's.

    ``previous`` is the prompt and reply tokens of the step before: the conversation so far is a
    prefix of this prompt, so when the server does not report ``cached_tokens`` that prefix is
    what it had already seen. None when the server sent no usage.
    """
    if usage is None:
        return None
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    if not prompt and not completion:
        total = getattr(usage, "total_tokens", None)
        return None if total is None else int(total)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    seen = int(cached) if cached is not None else min(previous, prompt)
    return max(0, prompt - seen) + completion


def _subject(args: dict[str, Any]) -> Suspect:
    if args.get("experiment_id"):
        return Suspect(scope="experiment", id=str(args["experiment_id"]), reason="asked by LLM")
    if args.get("model_id"):
        return Suspect(scope="model", id=str(args["model_id"]), reason="asked by LLM")
    return Suspect(scope="global", reason="asked by LLM")


class LLMReasoner:
    """Diagnoses with an OpenAI-compatible chat model; falls back to the deterministic rules.

    Args:
        settings: ``llm_base_url``, ``llm_model``, ``llm_api_key``, timeouts, retries, backoff,
            reply tokens, temperature, seed, step and token budgets, ``redact_fields``.
        client: A ready ``openai.OpenAI`` client (built from settings if None).
        fallback: The reasoner that stands when the LLM cannot (deterministic by default).
        observer: Told of every call to the endpoint (after its retries) and whether it failed
            (the endpoint stayed down, or its answer was not a valid diagnosis).

    Attributes:
        usage: One :class:`LLMUsage` per conversation, in order (read by the eval).
    """

    name = "llm"

    def __init__(
        self,
        settings: Settings,
        *,
        client: OpenAI | None = None,
        fallback: Reasoner | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not settings.llm_base_url or not settings.llm_model:
            raise ConfigError(
                "llm_base_url", settings.llm_base_url, "the LLM reasoner needs a URL and a model"
            )
        self.settings = settings
        self.model = settings.llm_model
        self.client = client or OpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key or "unused",
            timeout=endpoint_timeout(settings),
            max_retries=0,  # tenacity retries, so the policy is one and visible
        )
        self.fallback = fallback or DeterministicReasoner()
        self.observer = observer
        self.usage: list[LLMUsage] = []
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------------------------

    def diagnose(self, given: DiagnosisInput) -> Diagnosis:
        """Ask the model; on outage, garbage or spent budget, return the fallback's answer."""
        baseline = self.fallback.diagnose(given)
        extra: list[CheckOutcome] = []
        tally = _Tally()
        try:
            answer = self._converse(given, baseline, extra, tally)
        except LLMUnavailable as exc:
            self._record(tally, type(exc).__name__)
            _log.warning("LLM reasoner fell back: %s", exc)
            note = f"The LLM was unavailable ({exc}); the deterministic rules produced this result."
            return baseline.model_copy(update={"notes": [*baseline.notes, note], "extra": extra})
        self._record(tally, "answered")
        causes: dict[tuple[str, str | None, str | None], RootCause] = {}
        for cause in answer.causes:  # a cause named twice is one cause, at its first rank
            causes.setdefault((cause.cause, cause.experiment, cause.model), cause.root())
        return Diagnosis(
            causes=list(causes.values()),
            narrative=answer.summary,
            reasoner=f"llm:{self.model}",
            ruled_out=baseline.ruled_out,
            extra=extra,
        )

    # -- the conversation ----------------------------------------------------------------------

    def _record(self, tally: _Tally, outcome: str) -> None:
        usage = LLMUsage(
            steps=tally.steps,
            tokens=tally.tokens,
            first_prompt_tokens=tally.first_prompt,
            seconds=round(time.perf_counter() - tally.started, 3),
            outcome=outcome,
            text_calls=tally.text_calls,
            choices=tally.choices,
            answer_format=answer_format(self.settings),
        )
        with self._lock:
            self.usage.append(usage)

    def _sampling(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_tokens": self.settings.llm_reply_tokens,
            "temperature": self.settings.llm_temperature,
        }
        if self.settings.llm_seed is not None:
            options["seed"] = self.settings.llm_seed
        return options

    def _create(self, **kwargs: Any) -> Any:
        retrying = Retrying(
            retry=retry_if_exception_type(_RETRYABLE),
            stop=stop_after_attempt(self.settings.llm_max_retries + 1),
            wait=wait_exponential(multiplier=self.settings.llm_backoff_s, max=30),
            reraise=False,
        )
        try:
            return retrying(self.client.chat.completions.create, **kwargs)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            attempts = exc.last_attempt.attempt_number
            self._observe(failed=True, reason=type(last).__name__)
            raise LLMOutage(f"{type(last).__name__} after {attempts} attempts") from last
        except openai.APIError as exc:  # 4xx other than 429, undecodable bodies: terminal
            self._observe(failed=True, reason=type(exc).__name__)
            raise LLMRefused(f"{type(exc).__name__}: {exc}") from exc

    def _observe(self, *, failed: bool = False, reason: str = "") -> None:
        if self.observer is not None:
            self.observer.observe_llm_call(self.model, failed=failed, reason=reason)

    def _answer_request(self, schemas: list[dict[str, Any]], schema: dict[str, Any]) -> Any:
        """The options of a request that must answer: constrained where the endpoint can."""
        fmt = answer_format(self.settings)
        if fmt == "tool":
            return {"tools": schemas, "tool_choice": _FORCED}
        if fmt == "json_object":
            return {"response_format": {"type": "json_object", "schema": schema}}
        if fmt == "json_schema":
            named = {"name": "diagnosis", "schema": schema}
            return {"response_format": {"type": "json_schema", "json_schema": named}}
        assert_never(fmt)

    def _converse(
        self,
        given: DiagnosisInput,
        baseline: Diagnosis,
        extra: list[CheckOutcome],
        tally: _Tally,
    ) -> LLMDiagnosis:
        tools: dict[str, ToolSpec] = {}
        with_tools = offers_tools(self.settings) and given.toolbox is not None
        if with_tools and given.toolbox is not None:
            wanted = {spec.check for spec in given.playbook.checks}
            tools = check_tools(given.toolbox, only=wanted)
        candidates = candidate_causes(
            given.outcomes, given.playbook, given.alert, given.localization.suspects
        )
        if not candidates and not tools:
            raise LLMRefused(
                "no cause can stand on these checks and no tool is offered to find more"
            )
        tally.choices = len(candidates)
        schema = answer_schema(candidates)
        schemas = tool_schemas(tools, schema)
        fields = self.settings.redact_fields
        fmt = answer_format(self.settings)
        mode: AnswerMode = "tools" if tools else ("tool" if fmt == "tool" else "json")
        messages = first_messages(given, baseline, fields, candidates=candidates, mode=mode)
        budget = self.settings.llm_max_tokens
        previous = 0
        seen: set[str] = set()
        steps = self.settings.llm_max_steps
        force = not tools
        for step in range(steps):
            sent = len(messages)
            # Without tools, after a reply that was no usable call, and on the last step, the
            # answer is asked for: constrained to the schema where the endpoint can do it.
            answering = force or step == steps - 1
            options = (
                self._answer_request(schemas, schema)
                if answering
                else {"tools": schemas, "tool_choice": "auto"}
            )
            response = self._create(
                model=self.model, messages=messages, **options, **self._sampling()
            )
            if not getattr(response, "choices", None):
                self._observe(failed=True, reason="no_choices")
                raise LLMRefused("the endpoint returned no choices")
            message = response.choices[0].message
            usage = getattr(response, "usage", None)
            added = _new_tokens(usage, previous)
            if added is None:  # no usage from the server: estimate what this step added
                new_text = json.dumps(messages[sent - 1 if step else 0 :], default=str)
                added = estimate_tokens(new_text + (message.content or ""))
            if step == 0:
                sent_tools = options.get("tools", [])
                tally.first_prompt = int(getattr(usage, "prompt_tokens", 0) or 0) or (
                    estimate_tokens(json.dumps(messages) + json.dumps(sent_tools))
                )
            previous = int(getattr(usage, "prompt_tokens", 0) or 0) + int(
                getattr(usage, "completion_tokens", 0) or 0
            )
            tally.tokens += added
            tally.steps += 1
            calls = [
                (call.id, call.function.name, call.function.arguments or "")
                for call in message.tool_calls or []
            ]
            as_text = not calls
            if as_text:
                written = parse_text_calls(message.content or "", SUBMIT)
                calls = [(f"text_{step}_{i}", c.name, c.arguments) for i, c in enumerate(written)]
                tally.text_calls += len(calls)
            messages.append(message.model_dump(exclude_none=True))
            invalid = repeated = False
            results: list[tuple[str, str, str]] = []
            if not calls:
                invalid = True
                messages.append(
                    {
                        "role": "user",
                        "content": "That reply was not a valid diagnosis (no tool call, no JSON "
                        f"object). Answer with the diagnosis ({SUBMIT}'s arguments)"
                        + (", or call a check tool." if tools else "."),
                    }
                )
            for call_id, name, arguments in calls:
                if name == SUBMIT:
                    try:
                        answer = LLMDiagnosis.model_validate_json(arguments)
                    except ValidationError as exc:
                        invalid = True
                        content = f"Invalid diagnosis: {_brief(exc)}. Submit again."
                    else:
                        self._observe()
                        return answer
                elif name in tools and _call_key(name, arguments) in seen:
                    repeated = True  # a small model repeating itself: ask for the answer
                    content = (
                        f"{name} already ran with these arguments; its result is above. "
                        f"Call {SUBMIT} now."
                    )
                elif name in tools:
                    seen.add(_call_key(name, arguments))
                    content = self._run_tool(tools[name], arguments, extra, fields)
                else:
                    known = f"Tools: {sorted(tools)} and {SUBMIT}." if tools else ""
                    content = f"Unknown tool {one_line(name, 60)!r}. {known}".strip()
                    invalid = not tools
                results.append((call_id, name, content))
            if as_text and results:  # no tool_calls to answer: the results come as a user turn
                text = "\n\n".join(f"Result of {name}:\n{content}" for _, name, content in results)
                messages.append({"role": "user", "content": text})
            else:
                for call_id, _, content in results:
                    messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
            self._observe(failed=invalid, reason="invalid_answer" if invalid else "")
            force = invalid or repeated or not tools
            if tally.tokens > budget:
                raise LLMBudgetSpent(
                    f"token budget spent ({tally.tokens} new tokens > {budget}) "
                    "without a valid diagnosis"
                )
        raise LLMBudgetSpent(
            f"no valid diagnosis within {self.settings.llm_max_steps} steps (the step budget)"
        )

    def _run_tool(
        self, spec: ToolSpec, arguments: str, extra: list[CheckOutcome], fields: list[str]
    ) -> str:
        try:
            args = json.loads(arguments or "{}")
            result = spec.call(args)
        except (ValidationError, json.JSONDecodeError, TypeError) as exc:
            return f"Invalid arguments for {spec.name}: {_brief(exc)}"
        except (TerminalError, RetryableError) as exc:
            return f"The check {spec.name} could not run: {exc}"
        subject = _subject(args if isinstance(args, dict) else {})
        key = f"{spec.name}@{subject.key}#llm{len(extra) + 1}"
        extra.append(CheckOutcome(key=key, subject=subject, result=result))
        return quote_data(f"{spec.name}_result", redact(compact_result(result), fields))


@dataclass
class _Tally:
    """Counters of one conversation."""

    steps: int = 0
    tokens: int = 0
    first_prompt: int = 0
    text_calls: int = 0
    choices: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.perf_counter()


def _call_key(name: str, arguments: str) -> str:
    """A tool call's identity: its name and its arguments, parsed and sorted when they parse."""
    try:
        canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        canonical = arguments
    return f"{name}:{canonical}"


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()[:3]
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errs)
    return str(exc)[:300]
