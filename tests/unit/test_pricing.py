"""The price table: lookups by name and prefix, the default, overrides, and the estimate."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agentfarm.domain import models, present, pricing
from agentfarm.settings import Settings


def test_lookup_by_exact_name_then_longest_prefix_then_default() -> None:
    prices = pricing.table()
    assert pricing.price_of(prices, "gpt-5-mini") == prices["gpt-5-mini"]
    assert pricing.price_of(prices, "GPT-5-mini-2025-08-07") == prices["gpt-5-mini"]
    assert pricing.price_of(prices, "gpt-5-codex-latest") == prices["gpt-5-codex"]
    assert pricing.price_of(prices, None) == prices["default"]
    assert pricing.price_of(prices, "some-local-model") == prices["default"]
    assert pricing.price_of({"x": prices["o3"]}, "other") is None


def test_estimate_prices_cached_input_apart() -> None:
    price = pricing.ModelPrice(input=2.0, cached_input=0.5, output=8.0)
    usage = models.Usage(input_tokens=1_000_000, cache_read_input_tokens=2_000_000,
                         output_tokens=500_000)  # fmt: skip
    assert pricing.estimate({"m": price}, "m", usage) == 2.0 + 1.0 + 4.0
    no_cache_price = pricing.ModelPrice(input=2.0, output=8.0)
    assert pricing.estimate({"m": no_cache_price}, "m", usage) == 2.0 + 4.0 + 4.0
    assert pricing.estimate({}, "m", usage) is None


def test_the_table_is_editable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENTFARM_MODEL_PRICES",
        json.dumps({"My-Model": {"input": 1, "output": 2}, "default": {"input": 0, "output": 0}}),
    )
    prices = Settings().prices()
    assert prices["my-model"] == pricing.ModelPrice(input=1, output=2)
    assert prices["default"].input == 0 and "gpt-5" in prices  # the rest stays
    monkeypatch.setenv("AGENTFARM_MODEL_PRICES", json.dumps({"m": {"input": -1, "output": 2}}))
    with pytest.raises(ValidationError, match="model_prices"):
        Settings()


def test_an_estimate_reads_as_one() -> None:
    assert present.fmt_cost(0.1234) == "$0.1234"
    assert present.fmt_cost(0.1234, estimated=True) == "≈ $0.1234 (estimate)"
    assert present.fmt_cost(None, estimated=True) == "-"
    run = models.Run(spec=models.AgentSpec(repo="/r", agent="codex"))
    assert run.cost_estimated and run.model_dump()["cost_estimated"] is True
    assert not models.Run(spec=models.AgentSpec(repo="/r")).cost_estimated
