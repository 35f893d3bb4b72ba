"""Failover before the first token: one stream's start tried on a model's targets in turn.

A model resolves to targets (``models.Resolved``: upstream, model, weight). :class:`Failover`
is the stream's events: it starts the answer on the first target and, while nothing of it
has reached the client, gives up a target that fails and tries the next. The rules:

- **Order.** ``fallback``: the targets as listed. ``weighted``: the first drawn at random by
  weight, the others after it as listed (fallbacks).
- **Circuits.** :meth:`Failover.admit` (at the door, before any slot or upstream request) skips
  the targets whose circuit is open, in order, and keeps the first that lets a start go (a
  half-open circuit's probe); none does: :class:`UpstreamUnavailable` (503, ``Retry-After`` the
  shortest wait). A stream refused after that (no slot, its client gone) gives the probe's turn
  back (:meth:`Failover.release`). A target reached
  later whose circuit is open is skipped too (outcome ``circuit_open``). Every attempt's outcome
  is its upstream's circuit's (``circuits.verdict``).
- **What fails over** is what a circuit counts as the upstream's failure: connection refused or
  reset, TLS or DNS failure, a timeout, HTTP 408/409/429/5xx, a malformed first event, and no
  first token within ``FIRST_TOKEN_TIMEOUT_S``. The client's own faults (HTTP 400, 401, 403,
  404, another upstream would refuse the same request), an in-band error and a bug end the
  stream with that error at once.
- **Retry-After.** A target that failed with a ``Retry-After`` of at most ``RETRY_AFTER_CAP_S``
  goes to the back of the line, to be tried once more after the others, not before that wait
  is over (the stream waits for it when nothing else is left), and only if the attempt can
  start within the start budget. A longer ``Retry-After``, or none: it is not tried again.
- **Start budget.** No attempt starts later than ``START_BUDGET_S`` after the first one did.
- **Nothing of a failed attempt reaches the client.** The upstream's ``Opened`` is held back
  until the attempt's first content event (or its proper end) while another attempt may still
  follow it. An attempt is the *last* when nothing else left could start (a target whose
  circuit stays open past the attempt's first-token deadline, or a ``Retry-After`` past the
  start budget, does not count), or when its first-token deadline would fall past the start
  budget (or that timeout is 0): it runs as a lone upstream
  does, its ``Opened`` passed on at once (the headers and heartbeats of a slow first token)
  and no first-token deadline; once its ``Opened`` is out, it is the stream's, come what may.
- **After the first token nothing switches**: the attempt's events are the stream's; a cut, a
  stall or a malformed event is the stream's error event (a continuation on another model
  would corrupt tool calls and reasoning).
- **The end** when every target failed: the last attempt's error (an upstream's 429 stays a
  429 with its ``Retry-After``: ``errors.UpstreamError``).

It runs in the stream's producer greenlet (``streams.producer``): its waits (an upstream, a
``Retry-After``) are gevent waits that the producer's ``stop()`` interrupts, and closing it
closes the current attempt's upstream response. Each attempt is recorded (:class:`Attempt`):
:meth:`Failover.decided` gives them, with the upstream that won, for the stream's metadata,
and ``observe(upstream, outcome)`` hears of each (metrics). No Flask here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import gevent

from .circuits import Circuits, verdict
from .errors import UpstreamError, UpstreamUnavailable
from .events import Event, Failed, Opened
from .models import Target
from .providers.base import ChatRequest, Provider
from .streams.producer import StreamStopped

# Every outcome an attempt may have (the metric's label values): ``success`` (a first token or
# a proper end), ``circuit_open`` (skipped), ``first_token_timeout``, ``stopped`` (the stream was
# stopped meanwhile), ``internal_error`` (a bug), or the code of the upstream's UpstreamError.
OUTCOMES = ("success", "circuit_open", "first_token_timeout", "upstream_unreachable", "upstream_timeout",
            "upstream_http_error", "upstream_auth", "upstream_bad_response", "upstream_cut",
            "upstream_error", "stopped", "internal_error")


@dataclass(frozen=True)
class Settings:
    """``FIRST_TOKEN_TIMEOUT_S`` (0: none), ``START_BUDGET_S``, ``RETRY_AFTER_CAP_S``."""

    first_token_timeout: float
    start_budget: float
    retry_after_cap: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """The app's settings."""
        return cls(config["FIRST_TOKEN_TIMEOUT_S"], config["START_BUDGET_S"], config["RETRY_AFTER_CAP_S"])


@dataclass
class Attempt:
    """One target tried (or skipped): ``start_ms`` after the stream's start, ``ms`` long."""

    upstream: str
    model: str
    outcome: str = "pending"
    status: int | None = None  # the upstream's HTTP status, when it answered one
    start_ms: float = 0.0
    ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """As the stream's metadata holds it."""
        return {"upstream": self.upstream, "model": self.model, "outcome": self.outcome,
                "status": self.status, "start_ms": self.start_ms, "ms": self.ms}


class FirstTokenLate(Exception):
    """An attempt's first-token deadline passed."""


def ordered(targets: tuple[Target, ...], strategy: str, rng: random.Random | Any = random) -> list[Target]:
    """The order to try ``targets`` in (``weighted``: the first drawn by weight)."""
    if strategy != "weighted" or len(targets) < 2:
        return list(targets)
    first = rng.choices(range(len(targets)), weights=[t.weight for t in targets])[0]
    return [targets[first], *targets[:first], *targets[first + 1:]]


class Failover:
    """The events of one stream's answer over ``targets``; :attr:`events` is the iterator the
    producer pulls (closing it closes the upstream)."""

    def __init__(self, targets: tuple[Target, ...], strategy: str, providers: Mapping[str, Provider],
                 chat: ChatRequest, settings: Settings, *, circuits: Circuits | None = None,
                 observe: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | Any = random) -> None:
        self.providers, self.chat, self.settings = providers, chat, settings
        self.circuits, self.observe, self.clock = circuits, observe, clock
        self._line: list[tuple[Target, float]] = [(t, 0.0) for t in ordered(targets, strategy, rng)]
        self._retried: set[Target] = set()
        self.attempts: list[Attempt] = []
        self.upstream: str | None = None  # the target that won
        self.upstream_model: str | None = None  # the model it was asked for
        self.began = clock()
        self._admitted = False  # the head of the line passed its circuit
        self._running = False  # the events began: the attempts judge their circuits
        self.events: Iterator[Event] = self._run()

    def cap_output(self, tokens: int | None) -> None:
        """Ask every target for at most ``tokens`` output tokens (a budget's reservation): a
        request that set no limit gets ``max_tokens`` (each provider's own name for it: Ollama's
        ``num_predict``); one that set one set it within the reservation. Before the stream starts."""
        params = self.chat.params
        if tokens and params.get("max_tokens") is None and params.get("max_completion_tokens") is None:
            self.chat = replace(self.chat, params={**params, "max_tokens": tokens})

    # -- circuits ----------------------------------------------------------------------------
    def admit(self) -> None:
        """Skip the targets whose circuit is open (each an attempt ``circuit_open``) up to the
        first whose circuit lets a start go; :class:`UpstreamUnavailable` when none does.
        Once admitted, nothing more (until :meth:`release`)."""
        if self._admitted:
            return
        waits: list[tuple[str, float]] = []
        while self._line:
            target = self._line[0][0]
            wait = self._wait(target.upstream)
            if wait <= 0:
                self._admitted = True
                return
            self._line.pop(0)
            self._skip(target)
            waits.append((target.upstream, wait))
        names = list(dict.fromkeys(name for name, _ in waits))
        raise UpstreamUnavailable(names, min(wait for _, wait in waits))

    def recheck(self) -> None:
        """Admitted a while ago (the stream waited for a slot): a head whose circuit opened
        since is skipped and the rest admitted (:class:`UpstreamUnavailable` when none is
        left); a head whose circuit is not open goes (its probe's turn, when it took one)."""
        if not self._admitted or self._running or not self._line or self.circuits is None:
            return
        target = self._line[0][0]
        left = self.circuits.open_for(target.upstream) if target.upstream in self.circuits.names else 0.0
        if left <= 0:
            return
        self._line.pop(0)
        self._skip(target)
        self._admitted = False
        if not self._line:
            raise UpstreamUnavailable(target.upstream, left)
        try:
            self.admit()
        except UpstreamUnavailable as exc:
            raise UpstreamUnavailable(list(dict.fromkeys([target.upstream, *exc.names])),
                                      min(left, exc.retry_after)) from None

    def release(self) -> None:
        """Give back what :meth:`admit` took for a stream that will not start (no slot, a store
        error): the head's circuit hears no verdict, so a half-open one lets the next start
        probe. Nothing once the events began (their attempts judge), or when not admitted."""
        if self._admitted and not self._running and self._line:
            self._admitted = False
            self._judge(self._line[0][0].upstream, None)

    def _wait(self, name: str) -> float:
        circuits = self.circuits
        return circuits.allow(name) if circuits is not None and name in circuits.names else 0.0

    def _judge(self, name: str, event: Event | None) -> None:
        circuits = self.circuits
        if circuits is not None and name in circuits.names:
            circuits.judge(name, verdict(event))

    def _skip(self, target: Target) -> None:
        self._record(Attempt(target.upstream, target.model, "circuit_open", None, self._ms(self.clock())))

    # -- records -----------------------------------------------------------------------------
    def _ms(self, at: float) -> float:
        return round((at - self.began) * 1000, 1)

    def _record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        if self.observe is not None:
            self.observe(attempt.upstream, attempt.outcome)

    def decided(self, event: Event | None) -> dict[str, Any]:
        """The producer's ``on_first`` hook (the first token, or the end before one): the
        fields for the stream's metadata, ``upstream`` (the target that won, else ``None``), the
        model it was asked for (``upstream_model``: what the price table's ``upstream/model``
        names) and ``attempts``."""
        return {"upstream": self.upstream, "upstream_model": self.upstream_model,
                "attempts": [a.to_dict() for a in self.attempts]}

    # -- the events --------------------------------------------------------------------------
    def _could_start(self, by: float, end: float) -> bool:
        """Whether a target left in the line could start after an attempt that fails at ``by``:
        its ``Retry-After`` over before the start budget's ``end``, its circuit not open then
        (a look: no probe's turn taken)."""
        circuits = self.circuits
        for target, not_before in self._line:
            if not_before >= end:
                continue
            name = target.upstream
            if circuits is None or name not in circuits.names or self.clock() + circuits.wait(name) <= by:
                return True
        return False

    def _run(self) -> Iterator[Event]:
        self._running = True
        if not self._admitted:
            self.admit()
        self.began = self.clock()  # the stream's start (after any wait for a slot)
        checked = True  # the head of the line passed its circuit in admit()
        end = self.began + self.settings.start_budget
        error: UpstreamError | None = None
        while self._line:
            target, not_before = self._line.pop(0)
            now = self.clock()
            if error is not None and max(now, not_before) >= end:
                continue  # past the start budget: not tried
            if not_before > now:
                gevent.sleep(not_before - now)  # a Retry-After; the producer's stop() interrupts it
            if not checked and self._wait(target.upstream) > 0:
                self._skip(target)
                continue
            checked = False
            started = self.clock()
            attempt = Attempt(target.upstream, target.model, start_ms=self._ms(started))
            timeout = self.settings.first_token_timeout
            last = not timeout or started + timeout >= end or not self._could_start(started + timeout, end)
            deadline = None if last else started + timeout
            events = self.providers[target.upstream].stream(replace(self.chat, model=target.model))
            held: Event | None = None
            passed = False  # something of this attempt went to the stream: it is the stream's
            try:
                while True:
                    event = self._pull(events, deadline)
                    if event is None:
                        raise UpstreamError("the upstream ended without a result",
                                            code="upstream_bad_response")
                    if type(event) is not Opened:
                        break
                    if last:
                        passed = True
                        yield event
                    else:
                        held = event
            except (UpstreamError, FirstTokenLate) as exc:
                error = self._failed(target, attempt, exc, started)
                if passed or not self._failover(exc):
                    raise error from None
                continue
            except BaseException as exc:  # stopped (StreamStopped, GeneratorExit), or a bug
                self._close(events)
                bug = isinstance(exc, Exception) and not isinstance(exc, StreamStopped)
                self._end(attempt, "internal_error" if bug else "stopped", None, started)
                self._judge(target.upstream, None)
                raise
            self._end(attempt, "success", None, started)
            self.upstream, self.upstream_model = target.upstream, target.model
            # No attempt follows: the conversation is not kept for an answer that may stream
            # for minutes (the provider sent it; the usage estimate was made at the door).
            self.chat = replace(self.chat, messages=[])
            self._judge(target.upstream, event)  # a success costs no Redis round trip here
            try:
                if held is not None:
                    yield held
                yield event  # the first content event, or the proper end
                yield from events  # after the first token, the attempt's events are the stream's
            finally:
                self._close(events)  # closed here at once, not left to finalisation
            return
        if error is None:  # every target's circuit opened since the door let the stream in
            raise UpstreamError("every upstream of this model is failing: their circuits are open",
                                code="upstream_unreachable")
        raise error

    def _pull(self, events: Iterator[Event], deadline: float | None) -> Event | None:
        """The attempt's next event, by ``deadline`` (``FirstTokenLate``; the upstream closed)."""
        if deadline is None:
            return next(events, None)
        left = deadline - self.clock()
        if left <= 0:
            self._close(events)
            raise FirstTokenLate()
        timer = gevent.Timeout(left)
        timer.start()
        try:
            return next(events, None)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise FirstTokenLate() from None  # raised inside the provider: its response is closed
        finally:
            timer.close()

    def _failed(self, target: Target, attempt: Attempt, exc: Exception, started: float) -> UpstreamError:
        """Record a failed attempt (its circuit's verdict first) and the error it stands for."""
        if isinstance(exc, FirstTokenLate):
            timeout = self.settings.first_token_timeout
            error = UpstreamError(f"the upstream sent no first token within {timeout:g} s",
                                  code="upstream_timeout",
                                  detail=f"{target.upstream}/{target.model}: no first token in {timeout:g} s")
            outcome = "first_token_timeout"
        else:
            error = exc  # type: ignore[assignment]
            outcome = error.code
        self._judge(target.upstream, Failed(error.code, "", error.status, error.upstream_status))
        self._end(attempt, outcome, error.upstream_status, started)
        if error.retry_after is not None and error.retry_after <= self.settings.retry_after_cap \
                and target not in self._retried and self._failover(error):
            self._retried.add(target)
            self._line.append((target, self.clock() + error.retry_after))
        return error

    def _end(self, attempt: Attempt, outcome: str, status: int | None, started: float) -> None:
        attempt.outcome, attempt.status = outcome, status
        attempt.ms = round((self.clock() - started) * 1000, 1)
        self._record(attempt)

    @staticmethod
    def _failover(exc: Exception) -> bool:
        """Whether another target is tried after ``exc``: what counts against a circuit."""
        if isinstance(exc, FirstTokenLate):
            return True
        assert isinstance(exc, UpstreamError)
        return verdict(Failed(exc.code, "", exc.status, exc.upstream_status)) == "failure"

    @staticmethod
    def _close(events: Iterator[Event]) -> None:
        close = getattr(events, "close", None)
        if close is not None:
            close()
