"""Usage: each stream's token counts with their provenance, the ledger they add up in, token
budgets reserved at a stream's start and settled at its end, and the usage API.

- ``record``: a stream's final usage record (``source``: reported, partial, estimated, unknown);
- ``ledger``: usage per key name, model, upstream and day (memory, or Redis for every worker);
- ``budgets``: token budgets per key, reservations taken atomically (memory, or Redis);
- ``prices``: the price table (``[prices]`` of the upstreams file) that turns tokens into cost;
- ``service``: the app's ledger and budgets, the stream observer that settles each stream once.

This module imports nothing, so the stream core can import ``usage.record`` alone.
"""
