"""The container's OCI spec from its Docker document, and user/group lookup in the image (pure unit tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from berth.engine.containers import ContainerPaths, merge_config, normalize_host_config
from berth.engine.spec import (
    DEFAULT_PATH,
    all_capabilities,
    capabilities,
    container_spec,
    merge_tmpfs_options,
    parse_bind,
    parse_security_opts,
)
from berth.errors import InvalidArgument, NotImplementedYet, Unavailable
from berth.kernel import caps as kcaps
from berth.kernel.cgroups import Resources
from berth.oci.runtime_spec import Mount, Spec
from berth.runtime import spec as rspec
from berth.runtime.users import ExecUser, ensure_dir, resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
broken:x:notanumber:0::/:/bin/sh
99999999999999999999:x:0:0:numeric name:/root:/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:root,app
audio:x:29:app
app:x:1000:
nogroup:x:65534:
"""
CID = "c0ffee" + "0" * 58


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


@pytest.fixture
def paths(tmp_path: Path) -> ContainerPaths:
    p = ContainerPaths(tmp_path / "containers")
    p.dir(CID).mkdir(parents=True)
    for f in (p.hostname(CID), p.hosts(CID), p.resolv_conf(CID)):
        f.write_text("x\n")
    return p


def make_spec(rootfs: Path, paths: ContainerPaths, config: dict[str, Any] | None = None,
              host: dict[str, Any] | None = None, image: dict[str, Any] | None = None, **kw: Any) -> Spec:
    body = {"Image": "img", "Cmd": ["sh"], **(config or {})}
    doc = {"Config": merge_config(body, image or {}), "HostConfig": normalize_host_config(host or {})}
    doc["Config"].setdefault("Hostname", CID[:12])
    if not doc["Config"]["Hostname"]:
        doc["Config"]["Hostname"] = CID[:12]
    spec = container_spec(CID, doc, rootfs, paths, **kw)
    assert Spec.from_json(spec.to_json()) == spec  # every spec we make round-trips
    return spec


def mount(spec: Spec, dest: str) -> Mount | None:
    return next((m for m in spec.mounts if m.destination == dest), None)


# --- users -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "expected"), [
    ("", ExecUser(0, 0, (10,), "/root")),
    ("root", ExecUser(0, 0, (10,), "/root")),
    ("0", ExecUser(0, 0, (10,), "/root")),
    ("app", ExecUser(1000, 1000, (10, 29), "/home/app")),
    ("1000", ExecUser(1000, 1000, (10, 29), "/home/app")),
    ("app:audio", ExecUser(1000, 29, (), "/home/app")),
    ("app:4242", ExecUser(1000, 4242, (), "/home/app")),
    ("4242", ExecUser(4242, 0, (), "/")),
    ("4242:4343", ExecUser(4242, 4343, (), "/")),
    ("4242:wheel", ExecUser(4242, 10, (), "/")),
    ("nobody", ExecUser(65534, 65534, (), "/nonexistent")),
])
def test_resolve_user(rootfs: Path, user: str, expected: ExecUser) -> None:
    assert resolve_user(rootfs, user) == expected


def test_unknown_user_and_group(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^unable to find user ghost: no matching entries in passwd file$"):
        resolve_user(rootfs, "ghost")
    with pytest.raises(InvalidArgument, match=r"^unable to find group ghosts: no matching entries in group file$"):
        resolve_user(rootfs, "app:ghosts")
    with pytest.raises(InvalidArgument, match=r"unable to find user broken"):
        resolve_user(rootfs, "broken")  # a malformed line is skipped, never read as uid 0


@pytest.mark.parametrize("user", [
    "2147483648", "4294967296:0", "0:4294967296", "-1", "0:-1", "+2147483648", "99999999999999999999",
    "9" * 5000, "app:2147483648",
])
def test_hostile_numeric_users_refused(rootfs: Path, user: str) -> None:
    # a number out of range is an error, never a name lookup (the passwd file names a user "9999...": uid 0)
    with pytest.raises(InvalidArgument, match=r"uids and gids must be in range 0-2147483647"):
        resolve_user(rootfs, user)


def test_out_of_range_ids_in_the_files_refused(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").write_text("evil:x:4294967296:0::/:/bin/sh\nwrap:x:0:4294967296::/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("big:x:4294967296:root\n")
    for user in ("evil", "wrap", "4294967296"):
        with pytest.raises(InvalidArgument, match=r"must be in range"):
            resolve_user(rootfs, user)
    with pytest.raises(InvalidArgument, match=r"must be in range"):
        resolve_user(rootfs, "0:big")


def test_group_add(rootfs: Path) -> None:
    u = resolve_user(rootfs, "app", ["audio", "1000", "4242", "wheel", "29"])
    assert u.additional_gids == (10, 29, 1000, 4242)  # membership first, then group_add, deduplicated
    with pytest.raises(InvalidArgument, match=r"^Unable to find group ghosts: no matching entries in group file$"):
        resolve_user(rootfs, "app", ["ghosts"])
    with pytest.raises(InvalidArgument, match=r"must be in range"):
        resolve_user(rootfs, "app", ["4294967296"])


def test_no_passwd_file(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    root.mkdir()
    assert resolve_user(root, "") == ExecUser(0, 0, (), "/")
    assert resolve_user(root, "123:456") == ExecUser(123, 456, (), "/")
    assert resolve_user(root, "7", ["8"]) == ExecUser(7, 0, (8,), "/")
    with pytest.raises(InvalidArgument, match=r"unable to find user app"):
        resolve_user(root, "app")


def test_passwd_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("escaped:x:0:0::/:/bin/sh\n")
    # absolute: /etc/shadow of the host is never read (and the image has none)
    (root / "etc" / "passwd").symlink_to("/etc/shadow")
    (root / "etc" / "group").symlink_to("/etc/group")  # points at itself inside the root: a loop, not the host's
    with pytest.raises(InvalidArgument, match=r"unable to find user root"):
        resolve_user(root, "root")
    with pytest.raises(InvalidArgument, match=r"unable to find group root"):
        resolve_user(root, "0:root")
    # relative escape clamps at the root
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("../../../../../../outside/passwd")
    with pytest.raises(InvalidArgument, match=r"unable to find user escaped"):
        resolve_user(root, "escaped")
    # a symlink that stays inside works
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "passwd").write_text("inside:x:5:6::/home/in:/bin/sh\n")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/usr/share/passwd")
    assert resolve_user(root, "inside") == ExecUser(5, 6, (), "/home/in")


def test_passwd_that_is_not_a_regular_file_is_not_opened(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").unlink()
    os.mkfifo(rootfs / "etc" / "passwd")  # reading a FIFO would block the daemon
    assert resolve_user(rootfs, "") == ExecUser(0, 0, (), "/")
    with pytest.raises(InvalidArgument, match=r"unable to find user app"):
        resolve_user(rootfs, "app")


def test_ensure_dir_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "work").symlink_to(str(outside))  # absolute: means <root>/<outside> inside the container
    (root / "rel").symlink_to("../../../../../../../.." + str(outside))  # clamps at the root
    for link in ("work", "rel"):
        with pytest.raises(InvalidArgument, match=r"Cannot mkdir"):
            ensure_dir(root, f"/{link}/a/b")  # a symlink's target is never created
    assert list(outside.iterdir()) == []
    (root / str(outside).lstrip("/")).mkdir(parents=True)
    ensure_dir(root, "/work/a/b")
    ensure_dir(root, "/rel/c")
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "a" / "b").is_dir()
    assert (root / str(outside).lstrip("/") / "c").is_dir()
    (root / "file").write_text("")
    with pytest.raises(InvalidArgument, match=r"Cannot mkdir: /file/x is not a directory"):
        ensure_dir(root, "/file/x")


# --- the spec ----------------------------------------------------------------------------------------------------


def test_defaults(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, image={"Entrypoint": ["/entry"], "Cmd": ["a"]}, config={"Cmd": None})
    assert s.process.args == ("/entry", "a")
    assert s.process.env == (f"PATH={DEFAULT_PATH}", f"HOSTNAME={CID[:12]}", "HOME=/root")
    assert s.process.cwd == "/"
    assert (s.process.user.uid, s.process.user.gid, s.process.user.additional_gids) == (0, 0, (10,))
    assert s.process.terminal is False
    assert s.process.no_new_privileges is False
    assert s.process.oom_score_adj == 0
    assert s.process.capabilities is not None
    assert set(s.process.capabilities.bounding) == kcaps.DOCKER_DEFAULT
    assert s.process.capabilities.inheritable == () and s.process.capabilities.ambient == ()
    assert s.root.path == os.fspath(rootfs) and not s.root.readonly
    assert s.hostname == CID[:12]
    assert [n.type for n in s.linux.namespaces][:5] == ["pid", "network", "ipc", "uts", "mount"]
    assert s.linux.cgroups_path == f"berth/{CID}"
    assert s.linux.seccomp is not None and s.linux.seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "/proc/kcore" in s.linux.masked_paths and "/proc/sys" in s.linux.readonly_paths
    assert s.linux.sysctl == rspec.NETNS_SYSCTLS
    assert s.linux.resources is not None
    assert s.linux.resources["devices"] == [dict(r) for r in rspec.DEFAULT_DEVICE_RULES]
    dests = [m.destination for m in s.mounts]
    assert dests[:7] == ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"]
    for dest, f in (("/etc/hostname", paths.hostname), ("/etc/hosts", paths.hosts),
                    ("/etc/resolv.conf", paths.resolv_conf)):
        m = mount(s, dest)
        assert m is not None and m.source == os.fspath(f(CID)) and m.options == ("rbind", "rprivate")
    shm = mount(s, "/dev/shm")
    assert shm is not None and "size=67108864" in shm.options


def test_env_user_and_workdir(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, {"Env": ["PATH=/bin", "HOSTNAME", "A=1=2"], "User": "app", "Tty": True,
                                  "WorkingDir": "/srv/app/../data"})
    assert s.process.env == ("PATH=/bin", "TERM=xterm", "A=1=2", "HOME=/home/app")
    assert (s.process.user.uid, s.process.user.gid, s.process.user.additional_gids) == (1000, 1000, (10, 29))
    assert s.process.terminal is True
    assert s.process.cwd == "/srv/data"
    assert (rootfs / "srv" / "data").is_dir()
    s = make_spec(rootfs, paths, {"Env": ["HOME=/custom"], "User": "4242:4343"}, {"GroupAdd": ["audio"]})
    assert "HOME=/custom" in s.process.env
    assert (s.process.user.uid, s.process.user.gid, s.process.user.additional_gids) == (4242, 4343, (29,))
    with pytest.raises(InvalidArgument, match=r"the working directory 'rel' is invalid, it needs to be an absolute"):
        make_spec(rootfs, paths, {"WorkingDir": "rel"})
    with pytest.raises(InvalidArgument, match=r"uids and gids must be in range"):
        make_spec(rootfs, paths, {"User": "4294967296:0"})
    for wd in ("/proc/self/fd/7", "/proc/1/cwd", "/proc/thread-self/root/x"):  # CVE-2024-21626
        with pytest.raises(InvalidArgument, match=r"the working directory .* is invalid"):
            make_spec(rootfs, paths, {"WorkingDir": wd})
    assert make_spec(rootfs, paths, {"WorkingDir": "/proc"}).process.cwd == "/proc"


def test_capabilities() -> None:
    default = sorted(kcaps.DOCKER_DEFAULT)
    assert capabilities([], [], False) == default
    got = capabilities(["NET_ADMIN", "cap_sys_admin"], ["chown", "CAP_KILL"], False)
    assert "CAP_NET_ADMIN" in got and "CAP_SYS_ADMIN" in got and "CAP_CHOWN" not in got and "CAP_KILL" not in got
    assert capabilities(["CHOWN"], ["ALL"], False) == ["CAP_CHOWN"]
    everything = capabilities(["ALL"], ["NET_RAW"], False)
    assert "CAP_NET_RAW" not in everything and len(everything) == len(all_capabilities()) - 1
    assert capabilities([], [], True) == all_capabilities()
    with pytest.raises(InvalidArgument, match=r'^unknown capability: "CAP_FOO"$'):
        capabilities(["foo"], [], False)


def test_cap_add_reaches_seccomp(rootfs: Path, paths: ContainerPaths) -> None:
    def allowed(s: Spec) -> set[str]:
        assert s.linux.seccomp is not None
        return {n for r in s.linux.seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}

    assert "mount" not in allowed(make_spec(rootfs, paths))
    s = make_spec(rootfs, paths, host={"CapAdd": ["SYS_ADMIN"]})
    assert "mount" in allowed(s)
    assert s.process.capabilities is not None and "CAP_SYS_ADMIN" in s.process.capabilities.effective


def test_privileged(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"Privileged": True, "ReadonlyRootfs": True})
    assert s.process.capabilities is not None
    assert set(s.process.capabilities.bounding) == set(all_capabilities())
    assert s.linux.seccomp is None
    assert s.linux.masked_paths == () and s.linux.readonly_paths == ()
    sysfs, cg = mount(s, "/sys"), mount(s, "/sys/fs/cgroup")
    assert sysfs is not None and "ro" not in sysfs.options
    assert cg is not None and "ro" not in cg.options
    assert s.linux.resources is not None and s.linux.resources["devices"] == [{"allow": True, "access": "rwm"}]
    null = next(d for d in s.linux.devices if d.path == "/dev/null")
    assert (null.type, null.major, null.minor) == ("c", 1, 3)
    assert not any(d.path == "/dev/console" or d.path.startswith("/dev/pts/") for d in s.linux.devices)


def test_readonly_rootfs(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"ReadonlyRootfs": True, "Tmpfs": {"/run": ""}})
    assert s.root.readonly
    for m in s.mounts:
        ro = "ro" in m.options
        if m.destination in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/run"):
            assert not ro, m
        else:
            assert ro, m  # /sys, the cgroup mount and the network files


def test_security_opts(rootfs: Path, paths: ContainerPaths) -> None:
    assert parse_security_opts(["no-new-privileges"]).no_new_privileges
    assert parse_security_opts(["no-new-privileges:true"]).no_new_privileges
    assert not parse_security_opts(["no-new-privileges", "no-new-privileges=false"]).no_new_privileges
    assert parse_security_opts(["label=disable", "label:type:x", "apparmor=unconfined", "disable"]).seccomp == ""
    with pytest.raises(InvalidArgument, match=r'^invalid --security-opt 2: "foo=bar"$'):
        parse_security_opts(["foo=bar"])
    with pytest.raises(InvalidArgument, match=r'^invalid --security-opt 2: "no-new-privileges=maybe"$'):
        parse_security_opts(["no-new-privileges=maybe"])
    with pytest.raises(InvalidArgument, match=r'^invalid --security-opt 1: "x"$'):
        parse_security_opts(["x"])
    s = make_spec(rootfs, paths, host={"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]})
    assert s.process.no_new_privileges and s.linux.seccomp is None
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    s = make_spec(rootfs, paths, host={"SecurityOpt": ["seccomp=" + json.dumps(profile)]})
    assert s.linux.seccomp == {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    path = rootfs.parent / "profile.json"
    path.write_text(json.dumps(profile))
    s = make_spec(rootfs, paths, host={"SecurityOpt": [f"seccomp={path}"]})
    assert s.linux.seccomp is not None and s.linux.seccomp["defaultAction"] == "SCMP_ACT_ALLOW"
    with pytest.raises(InvalidArgument, match=r"^Decoding seccomp profile failed"):
        make_spec(rootfs, paths, host={"SecurityOpt": ["seccomp=nonsense"]})


def test_ulimits(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                                                   {"Name": "core", "Soft": -1, "Hard": -1}]})
    limits = {r.type: (r.soft, r.hard) for r in s.process.rlimits}
    assert limits == {"RLIMIT_NOFILE": (1024, 2048), "RLIMIT_CORE": (2**64 - 1, 2**64 - 1)}
    with pytest.raises(InvalidArgument, match=r"^invalid ulimit type: bogus$"):
        make_spec(rootfs, paths, host={"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]})
    with pytest.raises(InvalidArgument, match=r"soft limit must be less than or equal to hard limit: 10 > 5"):
        make_spec(rootfs, paths, host={"Ulimits": [{"Name": "nproc", "Soft": 10, "Hard": 5}]})


def test_sysctls(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, {"Domainname": "example.org"},
                  {"Sysctls": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20",
                               "net.ipv4.ip_unprivileged_port_start": "1024"}})
    assert s.linux.sysctl["net.ipv4.ip_forward"] == "1"
    assert s.linux.sysctl["net.ipv4.ip_unprivileged_port_start"] == "1024"  # the user's value wins
    assert s.linux.sysctl["kernel.domainname"] == "example.org"
    with pytest.raises(InvalidArgument, match=r'^sysctl "kernel.panic" is not in a separate kernel namespace$'):
        make_spec(rootfs, paths, host={"Sysctls": {"kernel.panic": "1"}})
    with pytest.raises(InvalidArgument, match=r'sysctl "net.ipv4.ip_forward" is not allowed in the hosts network'):
        make_spec(rootfs, paths, host={"NetworkMode": "host", "Sysctls": {"net.ipv4.ip_forward": "1"}})
    with pytest.raises(InvalidArgument, match=r'sysctl "kernel.sem" is not allowed in the hosts ipc namespace'):
        make_spec(rootfs, paths, host={"IpcMode": "host", "Sysctls": {"kernel.sem": "1 2 3 4"}})
    with pytest.raises(InvalidArgument, match=r"kernel.hostname"):
        make_spec(rootfs, paths, host={"Sysctls": {"kernel.hostname": "x"}})


def test_namespace_modes(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"NetworkMode": "host", "PidMode": "host", "UTSMode": "host",
                                       "IpcMode": "host"})
    assert [n.type for n in s.linux.namespaces if n.type != "cgroup"] == ["mount"]
    assert s.hostname == ""
    assert s.linux.sysctl == {}  # no netns defaults in the host's network namespace
    shm = mount(s, "/dev/shm")
    assert shm is not None and shm.is_bind and shm.source == "/dev/shm"
    s = make_spec(rootfs, paths, host={"NetworkMode": "none", "IpcMode": "none"})
    assert s.linux.namespace("network") is not None and s.linux.namespace("ipc") is not None
    assert mount(s, "/dev/shm") is None
    assert make_spec(rootfs, paths, host={"CgroupnsMode": "private"}).linux.namespace("cgroup") is not None
    assert make_spec(rootfs, paths, host={"CgroupnsMode": "host"}).linux.namespace("cgroup") is None
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        with pytest.raises(NotImplementedYet):
            make_spec(rootfs, paths, host={key: "container:abc"})


def test_shm_tmpfs_and_init(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"ShmSize": 128 << 20, "OomScoreAdj": 500, "Init": True,
                                       "Tmpfs": {"/run": "size=64m,exec", "/tmp": "mode=1777,size=1k,size=2k"}},
                  init_path="/usr/bin/tini-static")
    shm = mount(s, "/dev/shm")
    assert shm is not None and f"size={128 << 20}" in shm.options
    assert s.process.oom_score_adj == 500
    assert s.process.args == ("/sbin/docker-init", "--", "sh")
    init = mount(s, "/sbin/docker-init")
    assert init is not None and init.source == "/usr/bin/tini-static" and init.options == ("bind", "ro")
    run, tmp = mount(s, "/run"), mount(s, "/tmp")
    assert run is not None and run.type == "tmpfs" and run.options == ("nosuid", "nodev", "rprivate", "size=64m",
                                                                        "exec")
    assert tmp is not None and tmp.options == ("noexec", "nosuid", "nodev", "rprivate", "mode=1777", "size=2k")
    with pytest.raises(Unavailable, match=r"init"):
        make_spec(rootfs, paths, host={"Init": True})
    with pytest.raises(InvalidArgument, match=r"Invalid tmpfs option"):
        make_spec(rootfs, paths, host={"Tmpfs": {"/run": "bogus=1"}})
    with pytest.raises(InvalidArgument, match=r"mount path must be absolute"):
        make_spec(rootfs, paths, host={"Tmpfs": {"run": ""}})
    assert merge_tmpfs_options(["noexec", "ro", "exec", "rw"]) == ["ro", "exec", "rw"]


def test_binds(rootfs: Path, paths: ContainerPaths, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    missing = tmp_path / "created" / "by" / "bind"
    s = make_spec(rootfs, paths, host={"Binds": [f"{src}:/data:ro", f"{missing}:/data/sub:rw,rslave",
                                                 f"{src}:/etc/hosts:z"]})
    data, sub = mount(s, "/data"), mount(s, "/data/sub")
    assert data is not None and data.source == os.fspath(src) and data.options == ("rbind", "ro", "rprivate")
    assert sub is not None and sub.options == ("rbind", "rslave")
    assert [m.destination for m in s.mounts].index("/data") < [m.destination for m in s.mounts].index("/data/sub")
    assert missing.is_dir()  # Docker creates a missing legacy bind source
    hosts = [m for m in s.mounts if m.destination == "/etc/hosts"]
    assert len(hosts) == 1 and hosts[0].source == os.fspath(src)  # the user's mount replaces the engine's file
    assert parse_bind("/a:/b").options == ("rbind", "rprivate")
    with pytest.raises(NotImplementedYet, match=r"named volumes are not supported yet"):
        parse_bind("myvol:/data")
    with pytest.raises(NotImplementedYet, match=r"named volumes"):
        parse_bind("/anonymous")
    with pytest.raises(InvalidArgument, match=r"includes invalid characters for a local volume name"):
        parse_bind("./rel:/data")
    with pytest.raises(InvalidArgument, match=r"^invalid mode: bogus$"):
        parse_bind("/a:/b:bogus")
    with pytest.raises(InvalidArgument, match=r"^invalid mode: ro,rw$"):
        parse_bind("/a:/b:ro,rw")
    with pytest.raises(InvalidArgument, match=r"mount path must be absolute"):
        parse_bind("/a:b")
    with pytest.raises(InvalidArgument, match=r"destination can't be '/'"):
        parse_bind("/a:/")
    with pytest.raises(InvalidArgument, match=r"^invalid volume specification: '/a:/b:ro:x'$"):
        parse_bind("/a:/b:ro:x")
    with pytest.raises(InvalidArgument, match=r"^Duplicate mount point: /data$"):
        make_spec(rootfs, paths, host={"Binds": [f"{src}:/data"], "Tmpfs": {"/data": ""}})


def test_mounts_api(rootfs: Path, paths: ContainerPaths, tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    s = make_spec(rootfs, paths, host={"Mounts": [
        {"Type": "bind", "Source": str(src), "Target": "/m", "ReadOnly": True,
         "BindOptions": {"Propagation": "rshared", "NonRecursive": True}},
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 64 << 20, "Mode": 0o1770}},
        {"Type": "tmpfs", "Target": "/dev/shm", "TmpfsOptions": {"SizeBytes": 1000}},
    ]})
    m, t, shm = mount(s, "/m"), mount(s, "/t"), mount(s, "/dev/shm")
    assert m is not None and m.options == ("bind", "ro", "rshared")
    assert t is not None and t.options == ("noexec", "nosuid", "nodev", "rprivate", "mode=1770", "size=64m")
    assert shm is not None and shm.options[-1] == "size=1000"
    assert len([x for x in s.mounts if x.destination == "/dev/shm"]) == 1
    with pytest.raises(InvalidArgument, match=rf'^invalid mount config for type "bind": bind source path does not '
                                              f"exist: {tmp_path}/nope$"):
        make_spec(rootfs, paths, host={"Mounts": [{"Type": "bind", "Source": f"{tmp_path}/nope", "Target": "/x"}]})
    made = tmp_path / "made"
    make_spec(rootfs, paths, host={"Mounts": [{"Type": "bind", "Source": str(made), "Target": "/x",
                                               "BindOptions": {"CreateMountpoint": True}}]})
    assert made.is_dir()
    with pytest.raises(InvalidArgument, match=r'"tmpfs": field Source must not be specified'):
        make_spec(rootfs, paths, host={"Mounts": [{"Type": "tmpfs", "Source": "/x", "Target": "/x"}]})
    with pytest.raises(NotImplementedYet):
        make_spec(rootfs, paths, host={"Mounts": [{"Type": "volume", "Source": "v", "Target": "/x"}]})
    with pytest.raises(InvalidArgument, match=r"mount type unknown"):
        make_spec(rootfs, paths, host={"Mounts": [{"Type": "npipe", "Source": "v", "Target": "/x"}]})


def test_devices(rootfs: Path, paths: ContainerPaths, tmp_path: Path) -> None:
    s = make_spec(rootfs, paths, host={"Devices": [
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"}],
        "DeviceCgroupRules": ["c 42:* rmw", "b *:* m"]})
    assert [(d.path, d.type, d.major, d.minor) for d in s.linux.devices] == [("/dev/mynull", "c", 1, 3)]
    assert s.linux.resources is not None
    rules = s.linux.resources["devices"]
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"} in rules
    assert {"allow": True, "type": "c", "major": 42, "access": "rmw"} in rules
    assert {"allow": True, "type": "b", "access": "m"} in rules
    with pytest.raises(InvalidArgument, match=r"^invalid device mode: rwx$"):
        make_spec(rootfs, paths, host={"Devices": [{"PathOnHost": "/dev/null", "CgroupPermissions": "rwx"}]})
    (tmp_path / "plain").write_text("")
    with pytest.raises(InvalidArgument, match=r"not a device node"):
        make_spec(rootfs, paths, host={"Devices": [{"PathOnHost": str(tmp_path / "plain"),
                                                    "PathInContainer": "/dev/plain"}]})
    with pytest.raises(InvalidArgument, match=r"error gathering device information"):
        make_spec(rootfs, paths, host={"Devices": [{"PathOnHost": "/dev/berth-no-such-device"}]})
    with pytest.raises(InvalidArgument, match=r"invalid device cgroup rule format: 'x 1:2 r'"):
        make_spec(rootfs, paths, host={"DeviceCgroupRules": ["x 1:2 r"]})


def test_resources(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={
        "Memory": 64 << 20, "MemoryReservation": 32 << 20, "NanoCpus": 500_000_000, "CpuShares": 512,
        "CpusetCpus": "0", "CpusetMems": "0", "PidsLimit": 100, "BlkioWeight": 300, "MemorySwappiness": 10,
        "OomKillDisable": True})
    res = s.linux.resources
    assert res is not None
    assert res["memory"] == {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20, "swappiness": 10,
                             "disableOOMKiller": True}
    assert res["cpu"] == {"shares": 512, "period": 100_000, "quota": 50_000, "cpus": "0", "mems": "0"}
    assert res["pids"] == {"limit": 100}
    assert res["blockIO"] == {"weight": 300}
    r = Resources.from_oci(res)
    assert (r.memory, r.memory_swap, r.cpu_quota, r.cpu_period, r.pids_limit) == (64 << 20, 128 << 20, 50_000,
                                                                                  100_000, 100)
    s = make_spec(rootfs, paths, host={"CpuQuota": 20_000, "CpuPeriod": 50_000, "PidsLimit": 0, "MemorySwap": -1,
                                       "Memory": 10 << 20})
    res = s.linux.resources
    assert res is not None and res["cpu"] == {"quota": 20_000, "period": 50_000}
    assert res["pids"] == {"limit": -1} and res["memory"]["swap"] == -1
    for host, msg in (
        ({"NanoCpus": 1_000_000_000, "CpuQuota": 1000}, "Conflicting options: Nano CPUs and CPU Quota"),
        ({"NanoCpus": 10**15}, "Range of CPUs is from 0.01"),
        ({"CpusetCpus": "0-a"}, "Invalid value 0-a for cpuset cpus"),
        ({"BlkioWeight": 5}, "Range of blkio weight is from 10 to 1000"),
        ({"Memory": 10 << 20, "MemorySwap": 8 << 20}, "Minimum memoryswap limit should be larger"),
        ({"MemorySwap": 8 << 20}, "You should always set the Memory limit when using Memoryswap"),
        ({"CpuPeriod": 10}, "CPU cfs period can not be less than 1ms"),
        ({"Memory": "lots"}, "invalid Memory"),
    ):
        with pytest.raises(InvalidArgument, match=msg):
            make_spec(rootfs, paths, host=host)


def test_cgroups_path(rootfs: Path, paths: ContainerPaths) -> None:
    assert make_spec(rootfs, paths, cgroup_parent="test-parent").linux.cgroups_path == f"test-parent/{CID}"
    s = make_spec(rootfs, paths, host={"CgroupParent": "/../../custom/"})
    assert s.linux.cgroups_path == f"custom/{CID}"


def test_masked_paths_override(rootfs: Path, paths: ContainerPaths) -> None:
    s = make_spec(rootfs, paths, host={"MaskedPaths": [], "ReadonlyPaths": ["/proc/sys"]})
    assert s.linux.masked_paths == () and s.linux.readonly_paths == ("/proc/sys",)


def test_no_command(rootfs: Path, paths: ContainerPaths) -> None:
    doc = {"Config": {"Cmd": None, "Entrypoint": None}, "HostConfig": normalize_host_config({})}
    with pytest.raises(InvalidArgument, match=r"^no command specified$"):
        container_spec(CID, doc, rootfs, paths)
