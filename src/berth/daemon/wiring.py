"""The composition root: the only place that builds concrete stores and services and wires them together."""

from __future__ import annotations

import logging
from typing import Any

from berth.daemon.config import DaemonConfig
from berth.engine.events import EventBus
from berth.engine.services import Engine
from berth.engine.system import SystemService

log = logging.getLogger("berth.daemon")


def resolve_storage_driver(config: DaemonConfig) -> str:
    """``auto`` becomes ``overlayfs`` when a trial overlay mount works under the data root, else ``copy``."""
    if config.storage_driver != "auto":
        return config.storage_driver
    from berth.kernel.mount import overlay_supported

    return "overlayfs" if overlay_supported(config.data_root) else "copy"


def build_images(config: DaemonConfig, events: EventBus, storage_driver: str) -> Any:
    """The image service (content store, snapshotter, metadata DB, ImageService); ``None`` until wired."""
    return None


def build_engine(config: DaemonConfig) -> Engine:
    """Every engine service, built once at start-up; the data root and exec root exist already."""
    driver = resolve_storage_driver(config)
    events = EventBus()
    system = SystemService(config.data_root, storage_driver=driver)
    images = build_images(config, events, driver)
    log.debug("engine built: storage driver %s", driver)
    return Engine(events=events, system=system, images=images)


def start_engine(engine: Engine) -> None:
    """Crash recovery and other work done once before the socket accepts connections."""


def close_engine(engine: Engine) -> None:
    """Release what the services hold (databases, file handles) at shutdown."""
