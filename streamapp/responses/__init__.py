"""The OpenAI Responses API (``POST /v1/responses``) as one more front door on the stream lifecycle.

- ``schemas``: the request, as pydantic models (the OpenAPI document is made from them);
- ``mapper``: a request (with the context of a previous response) onto the one ``ChatRequest``;
- ``objects``: the event log as Responses events and the ``response`` object (one builder for both);
- ``encoder``: the ``responses`` wire format, the builder's events as SSE;
- ``docs``: the events as the OpenAPI document describes them.

The route module is ``streamapp.routes.responses``. Nothing here imports Flask.
"""
