"""The Redis store: stream logs shared by every worker and host.

Keys (``P`` is ``STREAMAPP_REDIS_PREFIX``), each with a TTL so nothing grows
without bound:

- ``P:log:<sid>``      a Redis stream; entry ``0-<seq>`` holds ``{"e": json}``
- ``P:meta:<sid>``     a hash of JSON values: format, route, owner, state,
                       ``last`` (the final seq) once finished, and what the
                       producer added (``annotate``: its upstream attempts...)
- ``P:readers:<sid>``  a sorted set: reader id -> lease expiry (unix time)
- ``P:cancel:<sid>``   set when a cancel was requested
- ``P:owner:<owner>``  a process's liveness key, renewed on every manager tick
- ``P:up``             renewed by every heartbeat: missing, Redis lost its data
- ``P:recovering``     set for a while by the heartbeat that finds ``P:up`` missing
- ``P:bell:<id>``      a doorbell that interrupts a dispatcher's blocking read
- ``P:recent``         a sorted set of the streams started lately (the inspector's list),
                       trimmed by age and count by every publisher batch
- ``P:live:<owner>``   the figures of a process's running streams, replaced every second
                       while ``P:inspecting`` (set by every listing for a while) is there

A stream's meta, readers and cancel keys get its log's TTL with every write,
so none of them expires before the log; a finished stream's keys expire
``ttl`` seconds after its end.

The parts, each an object with its own state; only the facade knows them all:

- ``codec``       key names; events and metadata as Redis holds them
- ``scripts``     the Lua scripts (one call per batch) and their argument packing
- ``health``      whether Redis answers; Redis failures as ``StoreError``
- ``clients``     the connections: short commands, blocking reads, pub/sub, own
- ``control``     control messages (pub/sub), cancel flags, liveness
- ``publisher``   new streams' metadata to Redis, off the start path
- ``writer``      appended events to Redis in batches (group commit)
- ``dispatcher``  remote readers' waits on a few blocking connections
- ``directory``   the recent streams, their metadata and live figures (the inspector)
- ``mirror``      the streams this process produces, served without Redis
- ``remote``      the streams that live only in Redis
- ``facade``      ``RedisStore``: the ``Store`` interface, routing each stream
                  to the mirror or to Redis

The process producing a stream keeps a mirror of its log: its readers never
wait on Redis. A stream's events wait for its metadata, and its id reaches no
client before it is in (``published``); a stream whose metadata Redis does not
take is served by this process only, and never reaches Redis (what may have, a
reply lost, is deleted). The mirror is freed once the stream's final event is
in Redis and no reader here uses it (a reader stuck for a lease goes on from Redis).

When Redis is down, operations on streams that live only in Redis raise
``StoreError``; streams produced here go on for their local readers, and a
stream created during an outage is served by this process only. The store
notices Redis coming back on its own (the heartbeat). When Redis comes back
empty (no persistence: this process's liveness key, or a stream's metadata,
is gone), every stream still mirrored here is published again, metadata then
its whole log, so a resume anywhere keeps working; until then the store says it
is ``recovering``, and a missing stream is waited for rather than taken for gone.

Forgetting an ended stream (a deleted response) deletes its keys and sends
"forget" to the process that produced it, which drops its mirror and whatever
of it the writer still holds; readers anywhere then find it gone.
"""

from .facade import RedisStore

__all__ = ["RedisStore"]
