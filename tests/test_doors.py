"""Keys, model lists and stream caps behave the same on every front door, through each door's
official client: /v1/chat/completions and /v1/responses (openai), /v1/messages (anthropic)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.helpers import SSEClient, first_deltas, poll_until

ALICE = "sk-doors-alice-7c1e2a"  # models=demo, one stream at a time
BOB = "sk-doors-bob-90d4b3"
LONG = "please answer slowly " * 12


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"alice:{ALICE} streams=1 models=demo\nbob:{BOB}\n")
    return start_server(API_KEYS_FILE=keys, DEMO_DELAY_MS=50, HEADER_WAIT_S=0.2, RESUME_GRACE_S=0)


def ask(server, door: str, key: str, model: str) -> None:
    """One request on ``door`` with the door's official client (no retries)."""
    if door == "messages":
        client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
        client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        return
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    if door == "chat":
        client.chat.completions.create(model=model, max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    else:
        client.responses.create(model=model, max_output_tokens=5, input="hi")


ERRORS = {  # door -> (bad key, model not allowed, too many streams), as its client raises them
    "chat": (openai.AuthenticationError, openai.PermissionDeniedError, openai.RateLimitError),
    "responses": (openai.AuthenticationError, openai.PermissionDeniedError, openai.RateLimitError),
    "messages": (anthropic.AuthenticationError, anthropic.PermissionDeniedError, anthropic.RateLimitError),
}


@pytest.mark.parametrize("door", sorted(ERRORS))
def test_a_bad_key_is_refused_on_every_door(keyed, door) -> None:
    with pytest.raises(ERRORS[door][0]):
        ask(keyed, door, "sk-not-a-key", "demo")


@pytest.mark.parametrize("door", sorted(ERRORS))
def test_a_keys_model_list_holds_on_every_door(keyed, door) -> None:
    with pytest.raises(ERRORS[door][1]) as refused:
        ask(keyed, door, ALICE, "openai/gpt-4o-mini")
    assert refused.value.status_code == 403
    ask(keyed, door, ALICE, "demo")  # what the list allows passes
    ask(keyed, door, BOB, "demo")


def held_stream(server) -> SSEClient | None:
    """A running stream of alice's, or None while her last one still holds her slot."""
    client = SSEClient(f"{server.url}/api/chat", "POST", {"uid": 1, "message": LONG},
                       headers={"X-API-Key": ALICE}, timeout=30)
    if client.status == 200:
        return client
    client.conn.close()
    return None


@pytest.mark.parametrize("door", sorted(ERRORS))
def test_a_keys_stream_cap_holds_on_every_door(keyed, door) -> None:
    running = poll_until(lambda: held_stream(keyed), 10, "alice's slot free again")
    first_deltas(running, 1)  # alice's one stream is running
    try:
        with pytest.raises(ERRORS[door][2]) as refused:
            ask(keyed, door, ALICE, "demo")
        assert refused.value.status_code == 429
        ask(keyed, door, BOB, "demo")  # another key is not held back
    finally:
        running.conn.close()
