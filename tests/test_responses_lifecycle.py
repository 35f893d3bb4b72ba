"""A response's life after its create call, with the official ``openai`` SDK: retrieve, resume on
another instance sharing Redis (``starting_after``), background, cancel, previous_response_id, delete."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.fake_upstream import token_list
from tests.helpers import poll_until, upstream_log


@pytest.fixture(scope="module")
def pair(start_server, redis_url):
    """Two instances sharing one Redis (one prefix): a stream started on one resumes on the other."""
    import uuid

    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{uuid.uuid4().hex[:10]}",
                    RESUME_GRACE_S=10, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0, READ_TIMEOUT_S=3)
    return start_server(**settings), start_server(**settings)


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-anything", max_retries=0, timeout=20)


def test_a_dropped_stream_resumes_on_another_instance_every_event_once(pair) -> None:
    a, b = pair
    first = []
    with sdk(a) as client, client.responses.create(model="openai/slow?tokens=12&delay_ms=60", input="hi",
                                                   stream=True) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 6:
                break  # the client drops the connection here
    rid, n = first[0].response.id, first[-1].sequence_number
    with sdk(b) as client, client.responses.retrieve(rid, stream=True, starting_after=n) as stream:
        rest = list(stream)
    events = first + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert rest[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(token_list(12)) == rest[-1].response.output_text
    item_ids = {e.item_id for e in events if e.type == "response.output_text.delta"}
    assert item_ids == {rest[-1].response.output[0].id}
    # Once more from the start, on the first instance: the same events.
    with sdk(a) as client, client.responses.retrieve(rid, stream=True) as stream:
        again = list(stream)
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events]


def test_background_generates_with_nobody_reading_and_is_retrieved(pair) -> None:
    a, b = pair
    with sdk(a) as client:
        resp = client.responses.create(model="openai/slow?tokens=5&delay_ms=50", input="hi", background=True)
    assert resp.status in ("queued", "in_progress") and resp.background is True
    with sdk(b) as client:
        done = poll_until(lambda: (r := client.responses.retrieve(resp.id)).status == "completed" and r, 20,
                          "the background response completed")
    assert done.output_text == "".join(token_list(5)) and done.usage.output_tokens == 5


def running_in_background(server, fake_upstream: str, tag: str):
    """A background response of a long answer, once its upstream request is open."""
    with sdk(server) as client:
        resp = client.responses.create(model=f"openai/slow?tokens=200&delay_ms=100&tag={tag}", input="hi",
                                       background=True)
    upstream_log(fake_upstream, tag, wait="opened")
    return resp


def test_cancel_stops_the_generation_wherever_it_runs(pair, fake_upstream, tag) -> None:
    a, b = pair
    resp = running_in_background(a, fake_upstream, tag)
    with sdk(b) as client:
        cancelled = client.responses.cancel(resp.id)
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(resp.id).status == "cancelled"
    assert upstream_log(fake_upstream, tag, wait="closed_by_peer")[0]["closed_by_peer"]


def test_previous_response_id_carries_input_and_output(pair, fake_upstream, tag) -> None:
    a, b = pair
    model = f"openai/normal?tokens=2&tag={tag}"
    with sdk(a) as client:
        first = client.responses.create(model=model, input="first question", instructions="be brief")
    with sdk(b) as client:
        second = client.responses.create(model=model, input="second question", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = upstream_log(fake_upstream, tag)[-1]["messages"]
    assert sent == [{"role": "user", "content": "first question"},
                    {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "second question"}]


def test_store_false_cannot_be_referenced_and_unknown_ids_are_404(pair) -> None:
    a, _ = pair
    with sdk(a) as client:
        unkept = client.responses.create(model="demo", input="hi", store=False)
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="demo", input="again", previous_response_id=unkept.id)
        assert caught.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="demo", input="again", previous_response_id="resp_gone")


def gone_everywhere(rid: str, *servers) -> None:
    """Retrieving ``rid`` (whole or streamed), continuing it and deleting it are 404s on each server."""
    for server in servers:
        with sdk(server) as client:
            for call in (lambda: client.responses.retrieve(rid),
                         lambda: list(client.responses.retrieve(rid, stream=True)),
                         lambda: client.responses.delete(rid)):
                with pytest.raises(openai.NotFoundError):
                    call()
            with pytest.raises(openai.NotFoundError) as caught:
                client.responses.create(model="demo", input="again", previous_response_id=rid)
            assert caught.value.body["param"] == "previous_response_id"  # as for an expired one


@pytest.mark.parametrize("deleter", [0, 1], ids=["same-instance", "other-instance"])
def test_a_deleted_response_is_gone_on_every_instance(pair, deleter) -> None:
    a, _ = pair
    with sdk(a) as client:
        resp = client.responses.create(model="demo", input="hi")
        assert client.responses.retrieve(resp.id).status == "completed"
    with sdk(pair[deleter]) as client:
        assert client.responses.delete(resp.id) is None  # the SDK returns nothing
    gone_everywhere(resp.id, *pair)


def test_delete_answers_openais_deletion_object(pair) -> None:
    a, b = pair
    with sdk(a) as client:
        rid = client.responses.create(model="demo", input="hi").id
    deleted = requests.delete(f"{b.url}/v1/responses/{rid}", timeout=20)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": rid, "object": "response.deleted", "deleted": True}


def test_deleting_a_running_background_response_cancels_it_first(pair, fake_upstream, tag) -> None:
    a, b = pair
    resp = running_in_background(a, fake_upstream, tag)
    with sdk(b) as client:
        client.responses.delete(resp.id)
    assert upstream_log(fake_upstream, tag, wait="closed_by_peer")[0]["closed_by_peer"]
    gone_everywhere(resp.id, *pair)


def test_only_its_client_sees_a_response_and_it_is_gone_after_its_retention(start_server) -> None:
    server = start_server(API_KEYS="alice:sk-alice-1,bob:sk-bob-2", RESUME_TTL_S=1, DEMO_DELAY_MS=0,
                          RESUME_GRACE_S=0)

    def as_(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=20)

    with as_("sk-alice-1") as alice, as_("sk-bob-2") as bob:
        resp = alice.responses.create(model="demo", input="hi")
        assert alice.responses.retrieve(resp.id).status == "completed"
        for call in (lambda: bob.responses.retrieve(resp.id), lambda: bob.responses.cancel(resp.id),
                     lambda: bob.responses.create(model="demo", input="x", previous_response_id=resp.id),
                     lambda: list(bob.responses.retrieve(resp.id, stream=True)),
                     lambda: bob.responses.delete(resp.id)):
            with pytest.raises(openai.PermissionDeniedError):
                call()
        deleted = alice.responses.create(model="demo", input="bye")  # the memory store forgets it too
        alice.responses.delete(deleted.id)
        with pytest.raises(openai.NotFoundError):
            alice.responses.retrieve(deleted.id)

        def gone() -> bool:
            try:
                alice.responses.retrieve(resp.id)
            except openai.NotFoundError:
                return True
            return False
        poll_until(gone, 10, "the response expired with its stream")


def test_an_admin_reads_and_stops_anothers_response_but_never_deletes_or_continues_it(start_server) -> None:
    """An admin may retrieve, resume, inspect and cancel another key's response; deleting it and
    feeding it into its own generation (``previous_response_id``, ``item_reference``) stay the
    owner's (403 ``not_stream_owner``)."""
    server = start_server(API_KEYS="alice:sk-alice-1,root:sk-root-9", ADMIN_KEYS="root", DEMO_DELAY_MS=0,
                          RESUME_GRACE_S=0)
    root_auth = {"Authorization": "Bearer sk-root-9"}

    def as_(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=20)

    with as_("sk-alice-1") as alice, as_("sk-root-9") as root:
        resp = alice.responses.create(model="demo", input="hi")
        sid = resp.id.removeprefix("resp_")
        assert root.responses.retrieve(resp.id).output_text == resp.output_text
        assert [e.type for e in root.responses.retrieve(resp.id, stream=True)][-1] == "response.completed"
        assert root.responses.cancel(resp.id).status == "completed"
        info = requests.get(f"{server.url}/api/streams/{sid}/info", headers=root_auth, timeout=10)
        assert info.status_code == 200 and info.json()["state"] == "finished"
        resumed = requests.get(f"{server.url}/api/streams/{sid}", timeout=10,
                               headers={**root_auth, "Last-Event-ID": f"{sid}-1"})
        assert resumed.status_code == 200 and "data:" in resumed.text
        refused = (lambda: root.responses.create(model="demo", input="x", previous_response_id=resp.id),
                   lambda: root.responses.create(model="demo", input=[
                       {"type": "item_reference", "id": resp.output[0].id}]),
                   lambda: root.responses.delete(resp.id))
        for call in refused:
            with pytest.raises(openai.PermissionDeniedError) as caught:
                call()
            assert caught.value.body["code"] == "not_stream_owner"
        assert alice.responses.retrieve(resp.id).status == "completed"  # still there
        alice.responses.delete(resp.id)
