"""What a generate call costs: an engine's ``Price`` (from settings) and the ``Cost`` of
one answer, computed here and nowhere else.

Cloud engines are priced per million input and output tokens, local engines per second
of wall time (what their machine costs); every price defaults to 0. An answer no engine
computed -- a response-cache hit, a replayed exchange -- costs 0.

    >>> price = Price(input_per_million=0.15, output_per_million=0.60)
    >>> price.cost(prompt_tokens=1000, completion_tokens=500, seconds=2.0).usd
    0.00045
    >>> Price(per_second=0.001).cost(prompt_tokens=10, completion_tokens=5, seconds=2.0).usd
    0.002
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Cost:
    """USD spent on one call, by what was paid for."""

    input_usd: float = 0.0
    output_usd: float = 0.0
    time_usd: float = 0.0
    seconds: float = 0.0  # wall time billed at ``per_second`` (the call's share of its batch)

    @property
    def usd(self) -> float:
        return self.input_usd + self.output_usd + self.time_usd


FREE = Cost()


class Price(BaseModel):
    """An engine's price in USD (settings: ``engines.<name>.price``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_million: float = Field(default=0.0, ge=0)  # per million prompt tokens
    output_per_million: float = Field(default=0.0, ge=0)  # per million completion tokens
    per_second: float = Field(default=0.0, ge=0)  # per second of wall time (local engines)

    def cost(self, *, prompt_tokens: int, completion_tokens: int, seconds: float) -> Cost:
        """The cost of one answer: its tokens, and its share of the wall time."""
        if not (self.input_per_million or self.output_per_million or self.per_second):
            return FREE  # unpriced: no object per answer
        return Cost(prompt_tokens * self.input_per_million / MILLION,
                    completion_tokens * self.output_per_million / MILLION,
                    seconds * self.per_second, seconds)


def usd(amount: float) -> str:
    """``$0.001234``: six decimals, so a small run's spend does not read as zero."""
    return f"${amount:,.6f}"
