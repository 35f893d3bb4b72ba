"""OpenAI's embedding list, as every provider answers ``embed``: checked, built, encoded.

The shape (openai-python ``types/create_embedding_response.py``, ``types/embedding.py``)::

    {"object": "list", "model": str,
     "data": [{"object": "embedding", "index": int, "embedding": [float, ...] | str}],
     "usage": {"prompt_tokens": int, "total_tokens": int}}

``usage`` is there only when the upstream gave a count: never invented. With
``encoding_format: "base64"`` (what the official SDKs ask for by default, then decode) each
vector is its float32 values, little-endian, in base64, as OpenAI and Ollama's own OpenAI
layer (``openai/openai.go``) write it.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

from ._http import bad_shape


def as_base64(vector: list[float]) -> str:
    """``vector`` as OpenAI's base64: float32 values, little-endian."""
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def embedding_list(vectors: list[Any], model: str, usage: dict[str, int] | None,
                   encoding_format: str | None) -> dict[str, Any]:
    """The answer for ``vectors`` (lists of floats, in input order), base64 when asked."""
    encode = as_base64 if encoding_format == "base64" else None
    data = [{"object": "embedding", "index": index, "embedding": encode(vector) if encode else vector}
            for index, vector in enumerate(vectors)]
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if usage is not None:
        out["usage"] = usage
    return out


def check_vector(vector: Any, what: str, text: str, encoded: bool = False) -> None:
    """Raise ``upstream_bad_response`` unless ``vector`` is a list of numbers (or, when
    ``encoded`` is allowed, a base64 string). The numbers are checked in C (an ``array``)."""
    if encoded and isinstance(vector, str):
        return
    if not isinstance(vector, list):
        raise bad_shape(what, "an embedding is not a list of numbers", text)
    try:
        array("d", vector)
    except (TypeError, OverflowError):
        raise bad_shape(what, "an embedding holds something other than numbers", text) from None
