"""Shared fixtures: real berthd processes on temporary roots (see ``berth.testing.daemon``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.kernel.mount import unmount_under
from berth.testing.daemon import BerthDaemon


@pytest.fixture
def berthd_factory() -> Iterator[Callable[..., BerthDaemon]]:
    """Start extra daemons inside one test: ``berthd_factory(start=True, **kwargs)``; all stopped at teardown."""
    daemons: list[BerthDaemon] = []

    def make(start: bool = True, **kwargs: object) -> BerthDaemon:
        daemon = BerthDaemon(**kwargs)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon.start() if start else daemon

    try:
        yield make
    finally:
        for daemon in reversed(daemons):
            daemon.stop()


@pytest.fixture
def berthd() -> Iterator[BerthDaemon]:
    """A fresh berthd for one test."""
    daemon = BerthDaemon()
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def shared_berthd() -> Iterator[BerthDaemon]:
    """One berthd for a whole test module (tests must not depend on each other's state)."""
    daemon = BerthDaemon()
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture
def area(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with any mount a failed test left under it detached on teardown."""
    yield tmp_path
    unmount_under(tmp_path)
