"""The composition root: the only place that builds concrete stores and services and wires them together.

It owns the top level of the data root (each store owns the layout below its own directory)::

    <data-root>/
      berthd.lock   berth.db   engine-id
      containers/   per-container files: hostname, hosts, resolv.conf, logs (berth.engine.containers)
      content/      the content store (berth.content.store)
      snapshots/    the snapshotter (berth.snapshots)
      tmp/          scratch mount points for layer extraction (berth.images.store), for cp/export of stopped
                    containers (berth.engine.archive), and commit's layer files (berth.engine.commit)
      bootstrap/    cached Debian packages for base images (berth.images.bootstrap)
      volumes/      the local volume driver's volumes (berth.volumes.store)
"""

from __future__ import annotations

import logging
import os

from berth.build.mounts import CacheMounts
from berth.content.store import ContentStore
from berth.daemon.config import DaemonConfig
from berth.engine.archive import ArchiveService
from berth.engine.build import BuildService
from berth.engine.commit import CommitService
from berth.engine.containers import ContainerPaths, ContainerService
from berth.engine.dns import ContainerDns, DnsOptions
from berth.engine.events import EventBus
from berth.engine.execs import ExecService
from berth.engine.filebinds import FileBindWatcher
from berth.engine.health import HealthChecker
from berth.engine.images import ImageService
from berth.engine.logs import LogService
from berth.engine.networks import NetworkOptions, NetworkService
from berth.engine.portcheck import PortChecker
from berth.engine.registry import RegistryService
from berth.engine.running import ContainerRunner
from berth.engine.services import Engine
from berth.engine.stats import StatsService
from berth.engine.system import SystemService
from berth.engine.volumes import VolumeService
from berth.images.store import ImageStore
from berth.metadata.containers import ContainerDB
from berth.metadata.images import ImageDB
from berth.metadata.networks import NetworkDB
from berth.metadata.volumes import VolumeDB
from berth.network.etcfiles import DnsSettings
from berth.snapshots.base import open_snapshotter
from berth.volumes.store import LocalDriver

log = logging.getLogger("berth.daemon")


def resolve_storage_driver(config: DaemonConfig) -> str:
    """``auto`` becomes ``overlayfs`` when a trial overlay mount works under the data root, else ``copy``."""
    if config.storage_driver != "auto":
        return config.storage_driver
    from berth.kernel.mount import overlay_supported

    return "overlayfs" if overlay_supported(config.data_root) else "copy"


def build_images(config: DaemonConfig, events: EventBus, storage_driver: str) -> ImageService:
    """The image service over a content store, a snapshotter and the metadata DB."""
    root = config.data_root
    store = ImageStore(ContentStore(root / "content"), open_snapshotter(root / "snapshots", storage_driver),
                       ImageDB(root / "berth.db"), root / "tmp")
    return ImageService(store, events, scratch=root / "tmp", bootstrap_cache=root / "bootstrap")


def find_init() -> str | None:
    """The tiny init for ``--init``: Debian's static tini (docker-init is tini too)."""
    for path in ("/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/bin/tini"):
        if os.path.exists(path):
            return path
    return None


def build_engine(config: DaemonConfig) -> Engine:
    """Every engine service, built once at start-up; the data root and exec root exist already."""
    driver = resolve_storage_driver(config)
    events = EventBus()
    system = SystemService(config.data_root, storage_driver=driver)
    images = build_images(config, events, driver)
    containers = ContainerService(
        ContainerDB(config.data_root / "berth.db"),
        images.store,
        images.store.snapshotter,
        events,
        ContainerPaths(config.data_root / "containers"),
    )
    images.image_users = containers.image_users
    runner = ContainerRunner(containers, config.exec_root, init_path=find_init(),
                             monitor_log=config.exec_root / "monitor.log")
    archive = ArchiveService(containers, runner.bundles, config.data_root / "tmp")
    commits = CommitService(containers, images.store, archive, config.data_root / "tmp", runner.runtime_root)
    log.debug("engine built: storage driver %s", driver)
    execs = ExecService(containers, runner)
    HealthChecker(containers, runner)  # registers itself as one of the runner's observers
    PortChecker(containers, runner)  # the same
    runner.observers.append(FileBindWatcher())
    containers.exec_ids = execs.ids
    networks = NetworkService(NetworkDB(config.data_root / "berth.db"), containers, events, config.exec_root,
                              NetworkOptions(prefix=config.network_prefix, bridge=config.bridge, bip=config.bip,
                                             iptables=config.iptables, firewall_backend=config.firewall_backend))
    containers.networks = networks
    runner.networks = networks
    runner.dns = dns = ContainerDns(networks, containers, containers.paths, DnsOptions(
        DnsSettings(config.dns, config.dns_search, config.dns_options), config.host_gateway_ip))
    runner.observers.append(dns)
    volumes = VolumeService(VolumeDB(config.data_root / "berth.db"), LocalDriver(config.data_root / "volumes"),
                            containers.db, events)
    containers.volumes = volumes
    runner.volumes = volumes
    # --default-runtime and --add-runtime, told to the services that validate and report them
    containers.runtimes.update(config.extra_runtimes)
    containers.default_runtime = config.default_runtime
    system.runtimes.update(config.extra_runtimes)
    system.default_runtime = config.default_runtime
    registry = RegistryService(images.store, events, config.insecure_registries)
    builds = BuildService(images, containers, runner, archive, commits, registry, config.data_root / "tmp",
                          CacheMounts(config.data_root / "build-cache"))
    return Engine(events=events, system=system, images=images, containers=containers, runner=runner,
                  logs=LogService(containers), execs=execs,
                  stats=StatsService(containers, runner.runtime_root, runner.runtime_of), archive=archive,
                  commits=commits, volumes=volumes, networks=networks, registry=registry, builds=builds)


def start_engine(engine: Engine) -> None:
    """Crash recovery and other work done once before the socket accepts connections."""
    engine.images.startup()
    if engine.networks is not None:  # in the background: bridges and the firewall stay off the ready time
        active = {cid for cid, _name, doc in engine.containers.db.all()
                  if doc["State"]["Status"] in ("running", "paused", "restarting")}
        engine.networks.start_background(active)


def close_engine(engine: Engine) -> None:
    """Release what the services hold (databases, file handles) at shutdown."""
    engine.images.store.db.close()
    if engine.registry is not None:
        engine.registry.close()
    engine.containers.db.close()
    if engine.networks is not None:
        engine.networks.close()
    if engine.volumes is not None:
        engine.volumes.db.close()
