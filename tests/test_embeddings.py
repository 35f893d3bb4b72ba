"""``POST /v1/embeddings`` driven by the official ``openai`` SDK's ``embeddings.create``, unmodified,
against real gunicorn + gevent over the demo and the fake OpenAI-format and Ollama-format upstreams:
what is passed on, what comes back, usage never invented, and the errors, limits and keys."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
import requests

from tests.fake_embed import BAD_SHAPES, ERROR_PAGE_MARKER, tokens_of, vector_for
from tests.helpers import upstream_log

LIMITS = {"MAX_EMBED_INPUTS": 4, "MAX_EMBED_CHARS": 200, "MAX_BODY_BYTES": 4096}


@pytest.fixture(scope="module")
def emb(start_server):
    return start_server(READ_TIMEOUT_S=2, CONNECT_TIMEOUT_S=2, **LIMITS)


def sdk(server, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def client(emb):
    with sdk(emb) as c:
        yield c


def raw(server, body: dict, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{server.url}/v1/embeddings", json=body, headers=headers, timeout=20)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def float32s(text: str) -> list[float]:
    data = base64.b64decode(text)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


TEXTS = ["The cat sat on the mat", "a cat on a mat", "Quarterly revenue grew 5%"]


# -- the demo: works with nothing configured -----------------------------------------------------

def test_the_demo_embeds_deterministically_and_like_texts_point_alike(client):
    resp = client.embeddings.create(model="demo", input=TEXTS)  # the SDK asks for base64, then decodes
    assert resp.object == "list" and resp.model == "demo"
    assert [d.index for d in resp.data] == [0, 1, 2] and {d.object for d in resp.data} == {"embedding"}
    cat, kitten, money = (d.embedding for d in resp.data)
    assert len(cat) == 128 and all(abs(dot(v, v) - 1) < 1e-5 for v in (cat, kitten, money))
    assert dot(cat, kitten) > 0.3 > abs(dot(cat, money))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    again = client.embeddings.create(model="demo", input=TEXTS[0], encoding_format="float")
    assert again.data[0].embedding == cat  # floats are the base64 vector's float32 values exactly
    short = client.embeddings.create(model="demo", input=TEXTS[0], dimensions=16)
    assert len(short.data[0].embedding) == 16


@pytest.mark.parametrize("tokens, vectors, count", [([5, 6, 7], 1, 3), ([[5, 6, 7], [8]], 2, 4)])
def test_the_demo_embeds_token_ids(client, tokens, vectors, count):
    resp = client.embeddings.create(model="demo", input=tokens, encoding_format="float")
    assert len(resp.data) == vectors and resp.usage.prompt_tokens == count


# -- the OpenAI-compatible upstream: the request as is -------------------------------------------

@pytest.mark.parametrize("given", ["one text", ["two words", "three more words"], [11, 12, 13],
                                   [[11, 12], [13]]])
def test_the_openai_upstream_gets_the_request_as_is(client, fake_upstream, tag, given):
    model = f"openai/normal?tag={tag}"
    resp = client.embeddings.create(model=model, input=given, dimensions=3, user="end-user-1")
    (record,) = upstream_log(fake_upstream, tag)
    assert record["api"] == "openai" and record["authorization"] == "Bearer sk-test"
    assert record["body"] == {"model": f"normal?tag={tag}", "input": given, "dimensions": 3,
                              "user": "end-user-1", "encoding_format": "base64"}
    inputs = [given] if isinstance(given, str) or isinstance(given[0], int) else given
    assert [d.embedding for d in resp.data] == [vector_for(item, i, 3) for i, item in enumerate(inputs)]
    assert resp.model == model
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == tokens_of(inputs)


def test_openai_floats_and_base64_are_passed_on(emb, tag):
    body = {"model": f"openai/normal?tag={tag}", "input": ["ab", "c"]}
    floats = raw(emb, {**body, "encoding_format": "float"}).json()
    assert [d["embedding"] for d in floats["data"]] == [vector_for("ab", 0), vector_for("c", 1)]
    encoded = raw(emb, {**body, "encoding_format": "base64"}).json()
    assert [float32s(d["embedding"]) for d in encoded["data"]] == [vector_for("ab", 0), vector_for("c", 1)]


# -- Ollama: /api/embed, rendered in OpenAI's shape ----------------------------------------------

def test_ollama_gets_api_embed_and_its_answer_is_rendered_as_openai(client, fake_upstream, tag):
    resp = client.embeddings.create(model=f"ollama/normal?tag={tag}", input=["a b", "ccc"], dimensions=4,
                                    user="dropped")
    (record,) = upstream_log(fake_upstream, tag)
    assert record["api"] == "ollama"
    assert record["body"] == {"model": f"normal?tag={tag}", "input": ["a b", "ccc"], "dimensions": 4}
    assert [d.embedding for d in resp.data] == [vector_for("a b", 0), vector_for("ccc", 1)]
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == tokens_of(["a b", "ccc"])


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_ollama_answers_in_the_encoding_asked(emb, encoding):
    body = raw(emb, {"model": "ollama/normal", "input": "hello", "encoding_format": encoding}).json()
    assert body["object"] == "list" and body["model"] == "ollama/normal"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    got = float32s(item["embedding"]) if encoding == "base64" else item["embedding"]
    assert got == vector_for("hello", 0)


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_usage_is_absent_when_the_upstream_sent_none(emb, client, provider):
    body = raw(emb, {"model": f"{provider}/nousage", "input": ["a", "b"]}).json()
    assert len(body["data"]) == 2 and "usage" not in body
    assert client.embeddings.create(model=f"{provider}/nousage", input="a").usage is None


def test_token_ids_to_ollama_are_a_400_before_any_request(client, fake_upstream, tag):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=f"ollama/normal?tag={tag}", input=[[1, 2], [3]])
    assert caught.value.body["param"] == "input" and caught.value.body["code"] == "unsupported_input"
    assert upstream_log(fake_upstream, tag) == []


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt-nope", "demo/nope", "openai/status?status=404",
                                   "ollama/status?status=404"])
def test_an_unknown_model_is_not_found(client, model):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=model, input="hi")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_an_upstream_refusal_is_a_502_with_its_message_only(client, provider):
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model=f"{provider}/status?status=503", input="hi")
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_http_error"
    with pytest.raises(openai.RateLimitError) as limited:  # an upstream's 429 stays one
        client.embeddings.create(model=f"{provider}/status?status=429", input="hi")
    assert limited.value.status_code == 429 and limited.value.body["code"] == "upstream_http_error"
    assert ("Rate limit reached" if provider == "openai" else "not found") in caught.value.message


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("mode, code", [("errorpage", "upstream_http_error"), ("inband", "upstream_error")])
def test_an_upstream_error_body_never_reaches_the_client(emb, provider, mode, code):
    resp = raw(emb, {"model": f"{provider}/{mode}", "input": "hi"})
    assert resp.status_code == 502 and resp.json()["error"]["code"] == code
    assert ERROR_PAGE_MARKER not in resp.text and "<html" not in resp.text


@pytest.mark.parametrize("provider, bad", [(p, b) for p in BAD_SHAPES for b in BAD_SHAPES[p]])
def test_an_answer_of_the_wrong_shape_is_a_502(emb, provider, bad):
    resp = raw(emb, {"model": f"{provider}/shape?bad={bad}", "input": "hi"})
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_bad_response"


def test_a_silent_upstream_is_a_504(client):
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="ollama/hang?silence_s=10", input="hi")
    assert caught.value.status_code == 504 and caught.value.body["code"] == "upstream_timeout"


# -- input limits ------------------------------------------------------------------------------

def test_the_input_caps_hold_at_their_edge(client):
    at = client.embeddings.create(model="demo", input=["x" * 50] * 4)  # 4 inputs, 200 characters
    assert len(at.data) == 4
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="demo", input=["x"] * 5)
    assert caught.value.body["code"] == "too_many" and caught.value.body["param"] == "input"
    assert "MAX_EMBED_INPUTS" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="demo", input=["x" * 100, "x" * 101])
    assert caught.value.body["code"] == "too_long" and "MAX_EMBED_CHARS" in caught.value.message
    with pytest.raises(openai.BadRequestError):  # token ids count one each
        client.embeddings.create(model="openai/normal", input=[[1] * 150, [2] * 51])


def test_a_body_over_max_body_bytes_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="demo", input="x" * 5000)
    assert caught.value.status_code == 413


@pytest.mark.parametrize("given", ["", [], ["a", ""], ["a", 1], [[1], []], [True], [-1]])
def test_input_that_cannot_be_embedded_is_a_400_naming_it(client, given):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="demo", input=given)
    assert caught.value.body["param"] == "input"


# -- keys, model lists, rate limits --------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    keys = tmp_path_factory.mktemp("embed-keys") / "keys.txt"
    keys.write_text("alice:sk-embed-alice models=demo,ollama/normal\ncarol:sk-embed-carol rate=2/hour\n"
                    "bob:sk-embed-bob\n")
    return start_server(API_KEYS_FILE=keys, ALLOWED_MODELS="openai:normal")


def test_a_key_not_allowed_the_model_is_refused(keyed):
    with sdk(keyed, "sk-embed-alice") as alice:
        assert alice.embeddings.create(model="ollama/normal", input="hi").data
        with pytest.raises(openai.PermissionDeniedError) as caught:
            alice.embeddings.create(model="openai/normal", input="hi")
    assert caught.value.body["code"] == "model_not_allowed" and caught.value.body["param"] == "model"
    with sdk(keyed, "sk-embed-bob") as bob:
        assert bob.embeddings.create(model="openai/normal", input="hi").data
        with pytest.raises(openai.BadRequestError) as caught:  # not in ALLOWED_MODELS
            bob.embeddings.create(model="openai/nousage", input="hi")
    assert caught.value.body["code"] == "model_not_allowed"
    with sdk(keyed, "sk-wrong") as nobody, pytest.raises(openai.AuthenticationError):
        nobody.embeddings.create(model="demo", input="hi")


def test_embeddings_count_against_the_rate_limit(keyed):
    with sdk(keyed, "sk-embed-carol") as carol:
        for _ in range(2):
            carol.embeddings.create(model="demo", input="hi")
        with pytest.raises(openai.RateLimitError) as caught:
            carol.embeddings.create(model="demo", input="hi")
    assert caught.value.body["code"] == "rate_limited"
    assert int(caught.value.response.headers["Retry-After"]) > 0


# -- the document ----------------------------------------------------------------------------------

def test_the_document_describes_the_route_and_its_answers(emb, tag):
    import schemathesis

    doc = requests.get(f"{emb.url}/api.json", timeout=10).json()
    entry = doc["paths"]["/v1/embeddings"]["post"]
    assert entry["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingsRequest"}
    assert "At most 4 inputs (MAX_EMBED_INPUTS)" in entry["description"]
    assert "at most 200 characters in all (MAX_EMBED_CHARS" in entry["description"]
    operation = schemathesis.openapi.from_dict(doc)["/v1/embeddings"]["POST"]
    answers = [raw(emb, {"model": "demo", "input": TEXTS}),
               raw(emb, {"model": f"openai/normal?tag={tag}", "input": ["a"], "encoding_format": "base64"}),
               raw(emb, {"model": "ollama/nousage", "input": "a"}),
               raw(emb, {"model": "demo", "input": []}), raw(emb, {"model": "nope", "input": "a"}),
               raw(emb, {"model": "openai/status?status=503", "input": "a"}),
               raw(emb, {"model": "openai/status", "input": "a"})]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 404, 502, 429]
    for resp in answers:
        assert str(resp.status_code) in entry["responses"]
        operation.validate_response(resp)
