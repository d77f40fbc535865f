"""What Claude models' tokens cost, to estimate a run's spend while it streams (pure).

Claude Code reports its own figure (``total_cost_usd``) only in a ``result``; until then
agentfarm estimates from each assistant message's ``usage`` so a budget holds in the middle
of a long turn too. List prices in US dollars per million tokens; a model not known here is
priced as Sonnet. Cache writes cost 1.25 times the input price, cache reads 0.1 times.
"""

from __future__ import annotations

from agentfarm.domain import models

#: (input, output) per million tokens, by the first marker found in the model's name.
_PRICES: tuple[tuple[tuple[str, ...], tuple[float, float]], ...] = (
    (("claude-3-opus", "opus-4-0", "opus-4-1", "opus-4-2025"), (15.0, 75.0)),
    (("opus",), (5.0, 25.0)),
    (("3-haiku", "haiku-3-0"), (0.25, 1.25)),
    (("3-5-haiku", "haiku-3-5"), (0.8, 4.0)),
    (("haiku",), (1.0, 5.0)),
    (("sonnet",), (3.0, 15.0)),
)
DEFAULT = (3.0, 15.0)


def prices(model: str | None) -> tuple[float, float]:
    name = (model or "").lower()
    for markers, price in _PRICES:
        if any(marker in name for marker in markers):
            return price
    return DEFAULT


def cost(model: str | None, usage: models.Usage) -> float:
    """US dollars for ``usage`` of ``model``, at list prices."""
    inp, out = prices(model)
    tokens = (
        usage.input_tokens * inp
        + usage.cache_creation_input_tokens * inp * 1.25
        + usage.cache_read_input_tokens * inp * 0.1
        + usage.output_tokens * out
    )
    return tokens / 1_000_000
