"""``POST /v1/embeddings``: its request (OpenAI's), its input limits, and its answer's shape.

The request model validates the body (``schemas.parse``) and is the document's schema of it;
:func:`check_embed_input` applies the configured caps (``MAX_EMBED_INPUTS`` inputs,
``MAX_EMBED_CHARS`` characters in all, a token id counting as one). The answer models only
describe (``openapi``): the providers build the answer (``providers.embedding``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WrapValidator
from pydantic_core import PydanticCustomError

from .errors import ApiError
from .schemas import ModelName

MAX_TOKEN_ID = 2**31 - 1

Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
TokenId = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


def _is_token(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKEN_ID  # not isinstance: a bool is an int too


def _input_problem(value: Any) -> str | None:
    """What is wrong with an ``input`` (``None``: nothing), in words naming the item."""
    if isinstance(value, str):
        return None if value else "an empty string cannot be embedded"
    if not isinstance(value, list) or not value:
        return "must be a string, or a non-empty list of strings, of token ids or of token-id lists"
    first = value[0]
    if isinstance(first, str):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                return f"item {index} is not a string (a list holds one kind of input)"
            if not item:
                return f"item {index} is an empty string, which cannot be embedded"
        return None
    if _is_token(first):
        bad = next((i for i, item in enumerate(value) if not _is_token(item)), None)
        return None if bad is None else f"item {bad} is not a token id (an integer 0 - {MAX_TOKEN_ID})"
    for index, item in enumerate(value):
        if not isinstance(item, list) or not item or not all(_is_token(t) for t in item):
            return f"item {index} is not a string, a token id or a non-empty list of token ids"
    return None


def _check_input(value: Any, _handler: Any) -> Any:
    problem = _input_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_input", problem)
    return value


class EmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings`` (OpenAI's embeddings request).

    ``model`` picks the provider as on ``/v1/chat/completions``: ``demo``, ``openai/<model>``,
    ``ollama/<model>``, or a bare name for the default provider. The other fields go to the
    upstream (to Ollama: ``input`` and ``dimensions``).
    """

    model_config = ConfigDict(extra="ignore")
    model: ModelName
    input: Annotated[Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1)], WrapValidator(_check_input), Field(
        description="the text to embed: a string, a list of strings, or token ids (a list of integers, or "
                    "a list of such lists: the OpenAI-compatible upstream only). One vector per string or "
                    "token-id list, in order.")]
    encoding_format: Annotated[Literal["float", "base64"] | None, Field(
        description="`float` (absent: the same) or `base64`: each vector's float32 values, little-endian, "
                    "in base64 (the official SDKs ask for it, then decode)")] = None
    dimensions: Annotated[int | None, Field(
        strict=True, ge=1, le=65536, description="the vectors' length, for models that can shorten them "
                                                 "(the demo: 128 unless told, at most 4096)")] = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    PASSED: ClassVar[tuple[str, ...]] = ("encoding_format", "dimensions", "user")

    def upstream_params(self) -> dict[str, Any]:
        """The request fields besides ``model`` and ``input``, as the client sent them."""
        return {name: getattr(self, name) for name in self.PASSED if getattr(self, name) is not None}


def check_embed_input(inputs: list[str] | list[list[int]], config: Mapping[str, Any]) -> None:
    """Raise ``ApiError`` (400, field ``input``, naming the setting) over ``MAX_EMBED_INPUTS``
    inputs or ``MAX_EMBED_CHARS`` characters in all (a token id counts as one); 0 is no cap."""
    most, total_max = config["MAX_EMBED_INPUTS"], config["MAX_EMBED_CHARS"]
    if most and len(inputs) > most:
        raise ApiError(f"at most {most} inputs (STREAMAPP_MAX_EMBED_INPUTS), got {len(inputs)}",
                       field="input", code="too_many")
    total = sum(len(item) for item in inputs)
    if total_max and total > total_max:
        raise ApiError(f"the inputs must total at most {total_max} characters, a token id counting as "
                       f"one (STREAMAPP_MAX_EMBED_CHARS), got {total}", field="input", code="too_long")


# -- The answer, for the document ------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Embedding(_Strict):
    """One input's vector."""

    object: Literal["embedding"]
    index: int = Field(ge=0, description="the input's place in `input`")
    embedding: list[float] | str = Field(description="the vector: floats, or with `encoding_format: "
                                                     "base64` its float32 values in base64")


class EmbeddingUsage(_Strict):
    """The upstream's count of the input's tokens."""

    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class EmbeddingList(_Strict):
    """``POST /v1/embeddings``'s answer (OpenAI's ``CreateEmbeddingResponse``)."""

    object: Literal["list"]
    data: list[Embedding]
    model: str = Field(description="the model as the request named it")
    usage: EmbeddingUsage | None = Field(
        default=None, description="absent when the upstream gave no count (never invented); the demo "
                                  "counts its own tokens")
