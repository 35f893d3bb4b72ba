"""The Anthropic Messages API as a front door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

- :mod:`.schemas`: the request, validated (pydantic); :mod:`.mapper`: the request onto the one
  ``ChatRequest`` in OpenAI chat names, the text the input limits count, the token estimate;
- :mod:`.objects`: Anthropic's objects (the ``message``, its usage and stop reason, the error
  body), Flask-free; :mod:`.encoder`: the stream log as Anthropic's typed SSE events (the
  ``messages`` wire format); the route is ``streamapp.routes.messages``.
"""
