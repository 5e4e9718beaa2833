"""The bundle of engine services that the API serves; built by ``berth.daemon`` (the composition root)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from berth.engine.archive import ArchiveService
    from berth.engine.build import BuildService
    from berth.engine.commit import CommitService
    from berth.engine.containers import ContainerService
    from berth.engine.events import EventBus
    from berth.engine.execs import ExecService
    from berth.engine.images import ImageService
    from berth.engine.logs import LogService
    from berth.engine.networks import NetworkService
    from berth.engine.registry import RegistryService
    from berth.engine.running import ContainerRunner
    from berth.engine.stats import StatsService
    from berth.engine.system import SystemService
    from berth.engine.volumes import VolumeService


@dataclass
class Engine:
    """Everything a route handler may reach. New services are added here as they land."""

    events: EventBus
    system: SystemService
    images: ImageService
    containers: ContainerService
    runner: ContainerRunner
    logs: LogService
    execs: ExecService | None = None
    stats: StatsService | None = None
    archive: ArchiveService | None = None
    commits: CommitService | None = None
    volumes: VolumeService | None = None
    networks: NetworkService | None = None
    registry: RegistryService | None = None
    builds: BuildService | None = None
