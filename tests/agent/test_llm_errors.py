"""LLM failures say whether trying again can help: an outage is retryable, a refusal is not."""

from __future__ import annotations

import pytest

from agent.llm import LLMOutage, LLMReasoner, LLMRefused, LLMUnavailable
from tests.agent.conftest import make_settings
from tests.agent.fake_llm import ScriptedLLM, error
from tools.errors import RetryableError, TerminalError

MESSAGES = [{"role": "user", "content": "hello"}]


def _reasoner(tmp_path, server: ScriptedLLM) -> LLMReasoner:
    return LLMReasoner(
        make_settings(
            tmp_path,
            llm_base_url=server.url,
            llm_model="scripted",
            llm_timeout_s=5.0,
            llm_max_retries=1,
            llm_backoff_s=0.01,
        )
    )


def test_a_4xx_answer_is_terminal_and_not_retried(tmp_path, llm):
    llm.add(error(400, "bad request"))
    with pytest.raises(LLMRefused) as err:
        _reasoner(tmp_path, llm)._create(model="scripted", messages=MESSAGES)
    assert isinstance(err.value, TerminalError) and isinstance(err.value, LLMUnavailable)
    assert not isinstance(err.value, RetryableError)
    assert len(llm.requests) == 1


def test_an_endpoint_down_through_every_retry_is_retryable(tmp_path, llm):
    llm.add(error(503), error(503))
    with pytest.raises(LLMOutage) as err:
        _reasoner(tmp_path, llm)._create(model="scripted", messages=MESSAGES)
    assert isinstance(err.value, RetryableError)
    assert not isinstance(err.value, TerminalError)
    assert len(llm.requests) == 2
