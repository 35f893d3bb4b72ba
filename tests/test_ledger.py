"""The usage ledger and ``GET /api/usage`` on real gunicorn servers: own usage, an admin's view of
another key and of every key, another key refused; one ledger for two instances on one Redis;
a resumed and a replayed stream counted once; tokens by key name on ``/metrics`` when enabled."""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers import SSEClient, first_deltas, poll_until

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789", "ops": "sk-ops-0123456789"}
MESSAGE = "hello"


def keys_file(tmp_path) -> str:
    path = tmp_path / "keys"
    path.write_text(f"alice:{KEYS['alice']}\nbob:{KEYS['bob']}\nops:{KEYS['ops']} admin\n")
    return str(path)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def chat(server, name: str, model: str, **body) -> dict:
    """A whole /api/chat stream over the fake OpenAI upstream; its end event's data."""
    with SSEClient(f"{server.url}/api/chat", "POST", {"uid": 1, "message": MESSAGE, "provider": "openai",
                                                      "model": model, **body}, headers=auth(name)) as client:
        return json.loads(client.read_all()[-1].data)


def usage(server, name: str, query: str = "") -> requests.Response:
    return requests.get(f"{server.url}/api/usage{query}", headers=auth(name), timeout=5)


def streams_of(server, name: str, query: str = "") -> int:
    return usage(server, name, query).json()["total"]["streams"]


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    return start_server(API_KEYS_FILE=keys_file(tmp_path_factory.mktemp("keys")), DEMO_DELAY_MS=0,
                        HEADER_WAIT_S=0.3, RESUME_GRACE_S=0, USAGE_METRICS_BY_KEY=1)


def test_own_usage_admin_usage_and_another_key_refused(keyed, tag) -> None:
    chat(keyed, "alice", f"normal?tokens=3&tag={tag}")
    chat(keyed, "alice", f"normal?tokens=4&tag={tag}")
    chat(keyed, "bob", f"normal?tokens=2&tag={tag}")
    poll_until(lambda: streams_of(keyed, "alice") == 2 and streams_of(keyed, "bob") == 1, 5, "the ledger")
    own = usage(keyed, "alice").json()
    model = f"openai/normal?tokens=3&tag={tag}"  # as /v1 clients name it
    assert own["key"] == "alice"
    assert {d["model"] for d in own["days"]} == {model, f"openai/normal?tokens=4&tag={tag}"}
    row = next(d for d in own["days"] if d["model"] == model)
    assert row == {"day": row["day"], "model": model, "prompt_tokens": 7, "completion_tokens": 3,
                   "total_tokens": 10, "streams": 1}
    assert own["total"] == {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21, "streams": 2}
    for query in ("?key=alice", "?all=1"):
        refused = usage(keyed, "bob", query)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"
    assert usage(keyed, "bob", "?key=bob").json()["total"]["streams"] == 1  # naming oneself is fine
    assert usage(keyed, "ops", "?key=alice").json() == own
    every = usage(keyed, "ops", "?all=1").json()
    assert every["key"] is None and {d["key"] for d in every["days"]} >= {"alice", "bob"}
    assert every["total"]["streams"] >= 3
    metrics = requests.get(f"{keyed.url}/metrics", timeout=5).text
    assert 'streamapp_usage_tokens_total{key="alice",kind="completion"} 7.0' in metrics


@pytest.mark.parametrize("query, field", [("?from=2026-02-30", "from"),
                                          ("?from=2026-05-02&to=2026-05-01", "from"),
                                          ("?from=2024-01-01&to=2026-01-01", "from"),
                                          ("?to=yesterday", "to")])
def test_a_bad_range_is_a_400_naming_the_field(keyed, query, field) -> None:
    resp = usage(keyed, "alice", query)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field


def test_a_range_without_the_day_is_empty(keyed) -> None:
    body = usage(keyed, "alice", "?from=2020-01-01&to=2020-01-31").json()
    assert body == {"key": "alice", "days": [],
                    "total": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "streams": 0}}


def test_one_ledger_across_instances_and_a_resumed_and_replayed_stream_counts_once(
        start_server, redis_url, redis_prefix, tmp_path, tag) -> None:
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, API_KEYS_FILE=keys_file(tmp_path),
                    HEADER_WAIT_S=0.3, RESUME_GRACE_S=10)
    a, b = start_server(**settings), start_server(**settings)
    chat(a, "alice", f"normal?tokens=2&tag={tag}")
    chat(b, "alice", f"normal?tokens=2&tag={tag}")
    poll_until(lambda: streams_of(b, "alice") == 2, 5, "both streams in one ledger")
    assert usage(a, "alice").json()["total"] == {"prompt_tokens": 14, "completion_tokens": 4,
                                                 "total_tokens": 18, "streams": 2}
    # Started on a, left after two tokens, resumed on b to its end, then replayed whole on a.
    body = {"uid": 1, "message": MESSAGE, "provider": "openai",
            "model": f"slow?tokens=6&delay_ms=150&tag={tag}"}
    with SSEClient(f"{a.url}/api/chat", "POST", body, headers=auth("alice")) as first:
        sid = first.headers["X-Stream-Id"]
        last = first_deltas(first, 2)[-1].id
    with SSEClient(f"{b.url}/api/chat", "POST", headers={**auth("alice"), "Last-Event-ID": last}) as resumed:
        end = json.loads(resumed.read_all()[-1].data)
    assert end["usage"]["source"] == "reported" and end["usage"]["completion_tokens"] == 6
    with SSEClient(f"{a.url}/api/streams/{sid}", headers=auth("alice")) as replay:
        assert json.loads(replay.read_all()[-1].data) == end
    poll_until(lambda: streams_of(a, "alice") == 3, 5, "the resumed stream in the ledger")
    with SSEClient(f"{b.url}/api/streams/{sid}", headers=auth("alice")) as again:
        again.read_all()
    total = usage(b, "alice").json()["total"]
    assert total == {"prompt_tokens": 21, "completion_tokens": 10, "total_tokens": 31, "streams": 3}
