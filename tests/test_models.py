"""The one model resolver (streamapp.models): what a name means, what is served, what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from streamapp import config as settings
from streamapp.errors import ApiError
from streamapp.models import Models, Resolved, check_allowed
from streamapp.providers import build_providers

KEYED = {"OPENAI_API_KEY": "sk-x", "OLLAMA_HOST": "127.0.0.1:11434"}  # both upstreams configured


def models(environ: dict[str, str] | None = None, **overrides: Any) -> Models:
    """The resolver of an app configured by ``environ`` (the standard variables) and ``overrides``."""
    environ = KEYED if environ is None else environ
    config = {**settings.DEFAULTS, **settings.from_environ(environ), **overrides}
    settings.validate(config)
    return Models(config, build_providers(config))


def ids(resolver: Models) -> list[str]:
    return [m.public_name for m in resolver.servable()]


def not_found(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert caught.value.field == "model"
    return caught.value


@pytest.mark.parametrize(("name", "provider", "expected"), [
    ("demo", None, Resolved("demo", "demo", "demo")),
    (None, None, Resolved("demo", "demo", "demo")),
    ("openai/gpt-4o", None, Resolved("openai", "gpt-4o", "openai/gpt-4o")),
    ("openai/org/llama-3", None, Resolved("openai", "org/llama-3", "openai/org/llama-3")),
    ("ollama/mistral", None, Resolved("ollama", "mistral", "ollama/mistral")),
    (None, "openai", Resolved("openai", "gpt-4o-mini", "openai/gpt-4o-mini")),
    (None, "ollama", Resolved("ollama", "llama3.2", "ollama/llama3.2")),
    ("org/llama-3", "openai", Resolved("openai", "org/llama-3", "openai/org/llama-3")),
    (None, "demo", Resolved("demo", "demo", "demo")),
    ("demo", "demo", Resolved("demo", "demo", "demo")),
])
def test_a_name_means_the_same_on_every_route(name, provider, expected) -> None:
    assert models().resolve(name, provider) == expected


@pytest.mark.parametrize(("name", "provider"), [
    ("gpt-nope", None), ("demo/x", None), ("ollama/", None), ("gpt-4o", "demo"),
])
def test_what_the_demo_default_does_not_serve_is_not_found(name, provider) -> None:
    assert name in not_found(lambda: models().resolve(name, provider)).message


@pytest.mark.parametrize("default", ["openai", "ollama"])
def test_a_bare_name_goes_to_an_upstream_default(default) -> None:
    resolver = models(DEFAULT_PROVIDER=default)
    assert resolver.resolve("gpt-nope") == Resolved(default, "gpt-nope", f"{default}/gpt-nope")
    assert resolver.resolve("demo").provider == "demo"
    assert resolver.resolve(None).provider == default


def test_openai_is_served_with_a_key_or_a_server_of_ones_own() -> None:
    assert not any(i.startswith("openai/") for i in ids(models({})))
    assert "openai/gpt-4o-mini" in ids(models({"OPENAI_API_KEY": "sk-x"}))
    assert "openai/gpt-4o-mini" in ids(models({"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}))
    why = not_found(lambda: models({}).resolve("openai/gpt-4o-mini")).message
    assert "OPENAI_API_KEY" in why
    not_found(lambda: models({}).resolve(None, "openai"))  # /ai-stream


@pytest.mark.parametrize(("environ", "overrides"), [
    ({"OLLAMA_HOST": "127.0.0.1:11434"}, {}),
    ({}, {"DEFAULT_PROVIDER": "ollama"}),
    ({}, {"READY_PROVIDERS": "ollama"}),
    ({}, {"ALLOWED_MODELS": "ollama:llama3.2"}),
])
def test_ollama_is_served_when_it_is_asked_for(environ, overrides) -> None:
    assert "ollama/llama3.2" in ids(models(environ, **overrides))
    assert models(environ, **overrides).resolve(None, "ollama").model == "llama3.2"


def test_ollama_is_not_served_when_nothing_names_it() -> None:
    assert ids(models({})) == ["demo"]
    assert "OLLAMA_HOST" in not_found(lambda: models({"OLLAMA_HOST": ""}).resolve("ollama/llama3.2")).message


def test_the_list_shows_the_allowed_models_when_there_is_an_allow_list() -> None:
    resolver = models(ALLOWED_MODELS="openai:gpt-4o,gpt-4o-mini")
    assert ids(resolver) == ["demo", "openai/gpt-4o", "openai/gpt-4o-mini", "ollama/llama3.2"]


def test_allowed_by_the_setting_and_by_the_key() -> None:
    allowed = {"openai": frozenset({"gpt-4o-mini"})}
    mini = Resolved("openai", "gpt-4o-mini", "openai/gpt-4o-mini")
    big = Resolved("openai", "gpt-4o", "openai/gpt-4o")
    check_allowed(mini, None, allowed)
    with pytest.raises(ApiError) as caught:
        check_allowed(big, None, allowed)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "model_not_allowed", "model")
    assert "STREAMAPP_ALLOWED_MODELS" in caught.value.message
    for key in (frozenset({"gpt-4o-mini"}), frozenset({"openai/gpt-4o-mini"})):
        check_allowed(mini, key, {})
        with pytest.raises(ApiError) as caught:
            check_allowed(big, key, {})
        assert (caught.value.status, caught.value.code) == (403, "model_not_allowed")
    check_allowed(Resolved("demo", "demo", "demo"), frozenset({"openai/gpt-4o"}), allowed)  # spends nothing
