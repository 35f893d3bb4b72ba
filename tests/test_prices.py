"""The price table (``[prices]`` of the upstreams file): read and checked with the file, and on a
real server the usage ledger's answers carry each row's cost and the currency."""

from __future__ import annotations

import json

import pytest
import requests
from openai import OpenAI

from streamapp.upstreams import parse
from tests.helpers import SSEClient, free_port, poll_until

ROUTES = """
[upstreams.fake]
kind = "openai"
base_url = "{base}"

[routes.priced]
targets = ["fake/normal?tokens=4"]

[routes.free]
targets = ["fake/normal?tokens=2"]
"""
PRICES = """
[prices]
currency = "EUR"

[prices.priced]
input = 1.5
output = 6
"""


def test_the_table_reads_with_the_file() -> None:
    prices = parse(ROUTES.format(base="http://127.0.0.1:9/v1") + PRICES, "u.toml").prices
    assert prices.currency == "EUR" and prices.models["priced"].input == 1.5
    assert prices.nano_cost("priced", "fake", "normal?tokens=4", 7, 4) == 34_500  # (7x1.5 + 4x6) / 1e6 EUR
    assert prices.nano_cost("free", "fake", "normal?tokens=2", 7, 4) == 0
    assert parse(ROUTES.format(base="http://127.0.0.1:9/v1"), "u.toml").prices is None


@pytest.mark.parametrize("table, expected", [
    ("[prices.priced]\ninput = 1\n", "[prices.priced] output: missing (required)"),
    ("[prices.priced]\ninput = -1\noutput = 1\n", "[prices.priced] input: must be a number >= 0, got -1"),
    ("[prices.priced]\ninput = 1\noutput = \"1\"\n", "[prices.priced] output: must be a number"),
    ("[prices.priced]\ninput = 1\noutput = 1\ncached = 1\n", "[prices.priced] cached: unknown key"),
    ("[prices]\npriced = 3\n", "[prices] priced: must be a table"),
    # a price that could never match: neither a route, demo, nor a route's upstream/model
    ("[prices.pricd]\ninput = 1\noutput = 1\n",
     "[prices] pricd: names no route, 'demo' nor a route's target"),
    ('[prices."fake/normal"]\ninput = 1\noutput = 1\n',
     '[prices] "fake/normal": names no route, \'demo\' nor a route\'s target'),
    ('[prices."fake/priced"]\ninput = 1\noutput = 1\n',
     '[prices] "fake/priced": names no route, \'demo\' nor a route\'s target'),
])
def test_each_mistake_is_refused_naming_its_table_and_key(table, expected) -> None:
    with pytest.raises(ValueError) as caught:
        parse(ROUTES.format(base="http://127.0.0.1:9/v1") + table, "u.toml")
    assert str(caught.value).startswith(f"u.toml: {expected}")


def test_the_usage_answers_carry_the_cost(start_server, fake_upstream, tmp_path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(ROUTES.format(base=f"{fake_upstream}/v1") + PRICES)
    server = start_server(UPSTREAMS_FILE=path, HEADER_WAIT_S=0.2)
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    for model in ("priced", "priced", "free"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    with SSEClient(f"{server.url}/api/chat", "POST", {"uid": 1, "message": "hi", "model": "priced"}) as chat:
        assert json.loads(chat.read_all()[-1].data)["usage"]["source"] == "reported"
    answer = poll_until(lambda: (a := requests.get(f"{server.url}/api/usage", timeout=5).json())
                        ["total"]["streams"] == 4 and a, 5, "four streams in the ledger")
    rows = {row["model"]: row for row in answer["days"]}
    assert rows["priced"]["streams"] == 3 and rows["priced"]["cost"] == pytest.approx(3 * 34.5e-6)
    assert rows["free"]["cost"] == 0
    assert answer["currency"] == "EUR" and answer["total"]["cost"] == pytest.approx(3 * 34.5e-6)


UPSTREAM_PRICED = """
[upstreams.fake]
kind = "openai"
base_url = "{base}"

[upstreams.down]
kind = "openai"
base_url = "http://127.0.0.1:{closed}/v1"

[routes.keyed]
targets = ["fake/normal?tokens=3"]

[routes.failing]
targets = ["down/normal?tokens=3", "fake/normal?tokens=2"]

[prices."fake/normal?tokens=3"]
input = 2
output = 10

[prices."down/normal?tokens=3"]
input = 1000
output = 1000

[prices."fake/normal?tokens=2"]
input = 4
output = 20
"""


def test_a_price_by_upstream_and_model_prices_the_target_that_answered(start_server, fake_upstream,
                                                                      tmp_path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(UPSTREAM_PRICED.format(base=f"{fake_upstream}/v1", closed=free_port()))
    server = start_server(UPSTREAMS_FILE=path, HEADER_WAIT_S=0.2)
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    for model in ("keyed", "failing"):  # failing: "down" refuses, "fake" answers
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    answer = poll_until(lambda: (a := requests.get(f"{server.url}/api/usage", timeout=5).json())
                        ["total"]["streams"] == 2 and a, 5, "two streams in the ledger")
    rows = {row["model"]: row for row in answer["days"]}
    assert rows["keyed"]["cost"] == pytest.approx((7 * 2 + 3 * 10) / 1e6)
    assert rows["failing"]["cost"] == pytest.approx((7 * 4 + 2 * 20) / 1e6)  # fake's price, not down's
