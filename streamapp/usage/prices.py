"""The price table (``[prices]`` of the upstreams file): what a million input and output tokens
of a model cost, so the ledger counts money beside tokens.

A stream is priced by the first of ``"<upstream>/<model>"`` (the target that answered it: its
upstream and the model asked of that upstream) and ``"<public name>"`` (the model as clients
name it: a route's name) that the table has; a model it lacks costs nothing (its tokens are
still counted). The upstreams file refuses a price that could never match (``upstreams``).
Costs are kept in billionths of the table's currency, integers that add up exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NANO = 1_000_000_000  # billionths in a unit of the currency
PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price per million input (prompt) and output (completion) tokens."""

    input: float  # noqa: A003 - the file's key
    output: float


@dataclass(frozen=True, slots=True)
class Prices:
    """The table: prices by model name, and the currency they are in."""

    models: Mapping[str, Price]
    currency: str = "USD"

    def nano_cost(self, model: str, upstream: str, upstream_model: str | None, prompt: int,
                  completion: int) -> int:
        """What ``prompt`` input and ``completion`` output tokens of public model ``model``,
        answered by ``upstream``'s ``upstream_model``, cost, in billionths of the currency (0 for
        a model without a price)."""
        price = (self.models.get(f"{upstream}/{upstream_model}") if upstream_model else None) \
            or self.models.get(model)
        if price is None:
            return 0
        return round((prompt * price.input + completion * price.output) * NANO / PER)


def units(nano: int) -> float:
    """Billionths of the currency as an amount of it."""
    return round(nano / NANO, 9)
