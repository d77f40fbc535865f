"""What a model's tokens cost, for agents that report tokens but no dollars (Codex).

A price table maps a model name to US dollars per million tokens: ``input`` (uncached),
``cached_input`` (input read from the provider's prompt cache) and ``output``. The server's
table is :data:`DEFAULT_PRICES` with ``AGENTFARM_MODEL_PRICES`` (JSON) over it. A model is
looked up by its exact name, then by the longest entry its name starts with
(``gpt-5-codex-2026`` -> ``gpt-5-codex``), then ``default`` (a run that names no model uses
the CLI's own default, whose name agentfarm does not see). What it returns is an estimate:
list prices, no discounts, no tiering, and whatever the provider charges that the CLI does not
report.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from agentfarm.domain import models

PER = 1_000_000


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(..., ge=0, le=10_000)
    cached_input: float | None = Field(
        None, ge=0, le=10_000, description="Default: the input price."
    )
    output: float = Field(..., ge=0, le=10_000)


def _p(input: float, cached: float, output: float) -> ModelPrice:
    return ModelPrice(input=input, cached_input=cached, output=output)


#: OpenAI's list prices (USD per million tokens) as of late 2025; edit with
#: AGENTFARM_MODEL_PRICES when they change or for another provider behind OPENAI_BASE_URL.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "default": _p(1.25, 0.125, 10.0),
    "gpt-5": _p(1.25, 0.125, 10.0),
    "gpt-5-codex": _p(1.25, 0.125, 10.0),
    "gpt-5-mini": _p(0.25, 0.025, 2.0),
    "gpt-5-nano": _p(0.05, 0.005, 0.40),
    "gpt-5-pro": _p(15.0, 15.0, 120.0),
    "gpt-4.1": _p(2.0, 0.50, 8.0),
    "gpt-4.1-mini": _p(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.025, 0.40),
    "gpt-4o": _p(2.50, 1.25, 10.0),
    "gpt-4o-mini": _p(0.15, 0.075, 0.60),
    "o3": _p(2.0, 0.50, 8.0),
    "o4-mini": _p(1.10, 0.275, 4.40),
    "codex-mini-latest": _p(1.50, 0.375, 6.0),
}


def table(overrides: Mapping[str, ModelPrice] | None = None) -> dict[str, ModelPrice]:
    """The defaults with ``overrides`` over them (an entry replaces the default's whole)."""
    return {**DEFAULT_PRICES, **(overrides or {})}


def price_of(prices: Mapping[str, ModelPrice], model: str | None) -> ModelPrice | None:
    name = (model or "").strip().lower()
    if name:
        if name in prices:
            return prices[name]
        prefixes = [key for key in prices if key != "default" and name.startswith(key)]
        if prefixes:
            return prices[max(prefixes, key=len)]
    return prices.get("default")


def estimate(
    prices: Mapping[str, ModelPrice], model: str | None, usage: models.Usage
) -> float | None:
    """The estimated cost of ``usage`` in US dollars; None when the table has no price for it."""
    price = price_of(prices, model)
    if price is None:
        return None
    cached = price.input if price.cached_input is None else price.cached_input
    dollars = (
        (usage.input_tokens + usage.cache_creation_input_tokens) * price.input
        + usage.cache_read_input_tokens * cached
        + usage.output_tokens * price.output
    ) / PER
    return round(dollars, 6)
