"""The event bus behind ``GET /events``: publish from any thread, replay the last 256, stream to subscribers.

Events carry Docker's full message shape, including the deprecated ``status``/``id``/``from``/``time``
fields that compose v1 still reads; filters follow moby's ``daemon/events/filter.go``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.errors import BerthError
from berth.oci.reference import parse as parse_reference

log = logging.getLogger("berth.events")

HISTORY = 256
_SUBSCRIBER_QUEUE = 1024
# event filters whose values also match "action: detail" actions by prefix (moby #25798)
_FUZZY_ACTIONS = frozenset({"health_status", "exec_create", "exec_start"})
# filter keys that match the actor's ID or its "name" attribute by prefix
_NAME_KEYS = ("container", "daemon", "volume", "network", "plugin", "node", "service", "secret", "config")


@dataclass(frozen=True)
class Event:
    """One event as dockerd records it."""

    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = 0
    scope: str = "local"

    def to_json(self) -> dict[str, Any]:
        """Docker's ``events.Message``, with the deprecated fields for containers and images."""
        out: dict[str, Any] = {}
        if self.type in ("container", "image"):
            out["status"] = self.action
            out["id"] = self.actor_id
            if self.type == "container" and self.attributes.get("image"):
                out["from"] = self.attributes["image"]
        out["Type"] = self.type
        out["Action"] = self.action
        out["Actor"] = {"ID": self.actor_id, "Attributes": dict(self.attributes)}
        out["scope"] = self.scope
        out["time"] = self.time_nano // 1_000_000_000
        out["timeNano"] = self.time_nano
        return out


def _strip_tag(image: str) -> str:
    """``alpine:3.19`` → ``alpine`` (moby's ``stripTag``); anything unparsable is returned as is."""
    try:
        return parse_reference(image).familiar_name
    except BerthError:
        return image


def _fuzzy(values: list[str] | None, source: str) -> bool:
    if not values:
        return True
    return any(source == v or source.startswith(v) for v in values)


def _exact(values: list[str] | None, source: str) -> bool:
    return not values or source in values


def matches(event: Event, filters: Mapping[str, list[str]]) -> bool:
    """Whether ``event`` passes ``filters``: values of one key are ORed, keys are ANDed (labels all must hold)."""
    if not filters:
        return True
    wanted_events = filters.get("event")
    if wanted_events and _FUZZY_ACTIONS & set(wanted_events):
        if not _fuzzy(wanted_events, event.action):
            return False
    elif not _exact(wanted_events, event.action):
        return False
    if not _exact(filters.get("type"), event.type):
        return False
    if not _exact(filters.get("scope"), event.scope):
        return False
    name = event.attributes.get("name", "")
    for key in _NAME_KEYS:
        values = filters.get(key)
        if values and not (_fuzzy(values, event.actor_id) or (name and _fuzzy(values, name))):
            return False
    images = filters.get("image")
    if images:
        image_name = event.attributes.get("name" if event.type == "image" else "image", "")
        candidates = {event.actor_id, image_name, _strip_tag(event.actor_id)}
        if image_name:
            candidates.add(_strip_tag(image_name))
        if not candidates & set(images):
            return False
    labels = filters.get("label")
    if labels:
        if not event.attributes:
            return False
        for label in labels:
            key, has_value, value = label.partition("=")
            if key not in event.attributes or (has_value and event.attributes[key] != value):
                return False
    return True


class _Subscriber:
    """A live listener: events are handed to its loop thread-safely; a slow one drops events, not the bus."""

    def __init__(self, loop: asyncio.AbstractEventLoop, filters: Mapping[str, list[str]]) -> None:
        self.loop = loop
        self.filters = filters
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)

    def offer(self, event: Event) -> None:
        if matches(event, self.filters):
            with contextlib.suppress(RuntimeError):  # the loop is closed: daemon shutting down
                self.loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("events: dropping %s %s for a slow subscriber", event.type, event.action)


class EventBus:
    """Thread-safe publisher with a ring buffer of recent events for ``since``/``until`` replay."""

    def __init__(self, history: int = HISTORY, clock: Callable[[], int] = time.time_ns) -> None:
        self._lock = threading.Lock()
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        # weak: a subscription dropped without being iterated to the end must not stay registered
        self._subscribers: weakref.WeakSet[_Subscriber] = weakref.WeakSet()
        self._clock = clock

    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> Event:
        """Record an event and hand it to every matching subscriber; callable from any thread."""
        with self._lock:
            event = Event(type=type, action=action, actor_id=actor_id,
                          attributes=dict(attributes or {}), time_nano=self._clock())
            self._history.append(event)
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.offer(event)
        return event

    def history(self) -> list[Event]:
        with self._lock:
            return list(self._history)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def subscribe(self, since: float | None = None, until: float | None = None,
                  filters: Mapping[str, list[str]] | None = None) -> Subscription:
        """Listen from now on (registered before this returns, so nothing published after the call is
        missed); iterate the result on the calling event loop.

        Buffered events are replayed first, only when ``since`` or ``until`` is given (as dockerd does);
        live ones follow until ``until`` passes; with ``until`` in the past, replay and end."""
        filters = dict(filters or {})
        since_ns = int(since * 1e9) if since is not None else None
        until_ns = int(until * 1e9) if until is not None else None
        sub = _Subscriber(asyncio.get_running_loop(), filters)
        live = until_ns is None or until_ns > self._clock()
        with self._lock:
            buffered = list(self._history) if since_ns is not None or until_ns is not None else []
            if live:
                self._subscribers.add(sub)
        replay = [e for e in buffered
                  if (since_ns is None or e.time_nano >= since_ns)
                  and (until_ns is None or e.time_nano <= until_ns)
                  and matches(e, filters)]
        return Subscription(self, sub if live else None, replay, until_ns)

    def _unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)


class Subscription:
    """An async iterator of events; it unsubscribes when iteration ends, on ``close``, or when dropped."""

    def __init__(self, bus: EventBus, sub: _Subscriber | None, replay: list[Event], until_ns: int | None) -> None:
        self._bus = bus
        self._sub = sub
        self._replay = replay
        self._until_ns = until_ns

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    def close(self) -> None:
        if self._sub is not None:
            self._bus._unsubscribe(self._sub)
            self._sub = None

    async def _events(self) -> AsyncIterator[Event]:
        try:
            for event in self._replay:
                yield event
            sub, until_ns, clock = self._sub, self._until_ns, self._bus._clock
            while sub is not None:
                if until_ns is None:
                    event = await sub.queue.get()
                else:
                    remaining = (until_ns - clock()) / 1e9
                    if remaining <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), remaining)
                    except TimeoutError:
                        return
                    if event.time_nano > until_ns:
                        return
                yield event
        finally:
            self.close()
