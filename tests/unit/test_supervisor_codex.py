"""A Codex run through the supervisor on the fake backend, replaying output recorded from the
real CLI: the OpenAI credentials and endpoint reach the launch (and no Claude ones), and the
cost is estimated from the price table and marked as an estimate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentfarm.agents.claude import ClaudeAdapter
from agentfarm.agents.codex import CodexAdapter
from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import errors, launch, models, pricing
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor.runs import Supervisor
from tests.unit.conftest import make_settings

RECORDED = Path(__file__).resolve().parents[1] / "data" / "codex" / "write-and-commit.jsonl"
PRICES = '{"gpt-test": {"input": 1000, "cached_input": 0, "output": 2000}}'
COST = (16130 * 1000 + 152 * 2000) / 1e6


def replay(_run: models.Run, _command: launch.AgentCommand) -> list[Step]:
    steps = [Step("stdout", line) for line in RECORDED.read_bytes().splitlines()]
    return [*steps, Step("exit", exit=ExitInfo(exit_code=0))]


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
    tuple[Supervisor, FakeBackend, Store]
]:  # fmt: skip
    monkeypatch.setenv("AGENTFARM_MODEL_PRICES", PRICES)
    store = await Store.open(tmp_path / "data" / "agentfarm.db")
    settings = make_settings(
        tmp_path / "data", openai_base_url="http://127.0.0.1:9/v1", codex_api_key="sk-codex-0123456"
    )
    backend = FakeBackend(replay)
    adapters = {"claude": ClaudeAdapter(), "codex": CodexAdapter()}
    sup = Supervisor(settings, store, SecretStore(settings.secrets_path), {"local": backend},
                     adapters)  # fmt: skip
    await sup.start()
    yield sup, backend, store
    await sup.close()
    await backend.shutdown()
    await store.close()


async def ended(store: Store, run_id: str) -> models.Run:
    async with asyncio.timeout(20):
        while not (run := await store.get_run(run_id)).status.terminal:
            await asyncio.sleep(0.01)
    return run


async def test_a_codex_run_gets_openai_credentials_and_an_estimated_cost(
    setup: tuple[Supervisor, FakeBackend, Store],
) -> None:
    sup, backend, store = setup
    spec = models.AgentSpec(repo="/srv/repo", prompt="add hello", agent="codex", model="gpt-test")
    run = await ended(store, (await sup.submit(spec)).id)
    assert run.status == models.RunStatus.succeeded, run.error
    launched = backend.world.launches[run.id]
    assert launched.credentials == {
        "CODEX_API_KEY": "sk-codex-0123456",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    assert 'model_providers.agentfarm.base_url="http://127.0.0.1:9/v1"' in launched.command.argv
    # 16130 uncached input tokens at $1000 a million and 152 output tokens at $2000.
    assert run.usage.input_tokens == 16130 and run.usage.output_tokens == 152
    assert run.cost_usd == pytest.approx(COST) and run.cost_estimated
    (result,) = [e for e in await store.list_events(run.id) if e.type == "agent.result"]
    assert result.data["cost_estimated"] is True
    assert result.data["cost_usd"] == pytest.approx(COST)


async def test_a_claude_run_gets_no_openai_key_and_a_codex_run_needs_one(
    setup: tuple[Supervisor, FakeBackend, Store], tmp_path: Path
) -> None:
    sup, backend, store = setup
    run = await ended(store, (await sup.submit(models.AgentSpec(repo="/r", prompt="p"))).id)
    assert set(backend.world.launches[run.id].credentials) == {"ANTHROPIC_API_KEY"}
    assert not run.cost_estimated
    sup.settings = make_settings(tmp_path / "data")
    with pytest.raises(errors.ConfigurationError, match="CODEX_API_KEY"):
        await sup.submit(models.AgentSpec(repo="/r", prompt="p", agent="codex"))


def test_default_prices_cover_the_default_model() -> None:
    assert pricing.price_of(pricing.table(), None) is not None


async def test_a_prompt_longer_than_an_argument_may_be_reaches_codex_on_stdin(
    setup: tuple[Supervisor, FakeBackend, Store],
) -> None:
    sup, backend, store = setup
    long = "x" * 190_000  # over Linux's 128 KiB limit for one argument
    run = await ended(store, (await sup.submit(models.AgentSpec(repo="/r", prompt=long,
                                                                 agent="codex"))).id)  # fmt: skip
    assert run.status == models.RunStatus.succeeded, run.error
    command = backend.world.launches[run.id].command
    assert long.encode() in command.stdin and all(len(a) < 10_000 for a in command.argv)
