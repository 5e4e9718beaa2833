"""Image commands: ``berth image ls|load|save|tag|rm|history|import|inspect|prune|pull|push|bootstrap`` and the
top-level shortcuts docker has for them (``images``, ``load``, ``save``, ``tag``, ``rmi``, ``history``,
``import``, ``pull``, ``push``), plus ``login``/``logout`` (credentials in docker's config.json). Wire calls
follow docker CLI 28 (engine-api.md §4); output follows docker's formatters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.cli.command import Arity, CliError, Command, CommandParser, Context, Group, add_filter, add_format
from berth.cli.objects import render

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence

    from berth.client.http import Response

IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGES_DIGESTS_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
IMAGE_HEADERS = {
    "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT", "Size": "SIZE", "Containers": "CONTAINERS", "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE", "UniqueSize": "UNIQUE SIZE",
}
HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
HISTORY_RAW_TABLE = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
HISTORY_HEADERS = {
    "ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
    "Size": "SIZE", "Comment": "COMMENT",
}
PRUNE_DANGLING_WARNING = "WARNING! This will remove all dangling images."
PRUNE_ALL_WARNING = "WARNING! This will remove all images without at least one container associated to them."


# ---- shared pieces ------------------------------------------------------------------------------------

def show_stream(ctx: Context, resp: Response) -> None:
    """A progress/JSON stream rendered like jsonmessage; any other content type is copied verbatim."""
    if resp.content_type == "application/json":
        from berth.cli.progress import display

        display(resp.iter_json(), ctx.stdout, ctx.stdout_is_tty())
        return
    for chunk in resp.iter_chunks():
        ctx.out(chunk.decode("utf-8", "replace"))
    ctx.stdout.flush()


def _path(name: str, suffix: str = "") -> str:
    from berth.client.http import quote_name

    return f"/images/{quote_name(name)}{suffix}"


def _open_input(path: str) -> Any:
    try:
        return open(path, "rb")
    except OSError as err:
        raise CliError(f"open {path}: {(err.strerror or str(err)).lower()}") from None


# ---- ls -----------------------------------------------------------------------------------------------

def image_rows(images: Sequence[Mapping[str, Any]], trunc: bool, digests: bool, now: float) -> list[dict[str, str]]:
    """One row per repository:tag (and per digest with ``digests``), like docker's imageFormat."""
    rows: list[dict[str, str]] = []
    for img in images:
        for repo, tag, digest in _image_names(img, digests):
            rows.append(_image_row(img, repo, tag, digest, trunc, now))
    return rows


def _image_names(img: Mapping[str, Any], show_digests: bool) -> list[tuple[str, str, str]]:
    from berth.errors import BerthError
    from berth.oci.reference import parse

    repo_tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
    repo_digests = [d for d in img.get("RepoDigests") or [] if d != "<none>@<none>"]
    if not repo_tags and not repo_digests:
        return [("<none>", "<none>", "<none>")]
    tags: dict[str, list[str]] = {}
    digests: dict[str, list[str]] = {}
    for text in repo_tags:
        try:
            ref = parse(text)
        except BerthError:
            continue
        if ref.tag is not None:
            tags.setdefault(ref.familiar_name, []).append(ref.tag)
    for text in repo_digests:
        try:
            ref = parse(text)
        except BerthError:
            continue
        if ref.digest is not None:
            digests.setdefault(ref.familiar_name, []).append(str(ref.digest))
    names: list[tuple[str, str, str]] = []
    for repo, repo_tag_list in tags.items():
        repo_digest_list = digests.pop(repo, []) if show_digests else []
        digests.pop(repo, None)
        for tag in repo_tag_list:
            if not repo_digest_list:
                names.append((repo, tag, "<none>"))
            names.extend((repo, tag, d) for d in repo_digest_list)
    for repo, repo_digest_list in digests.items():
        if show_digests:
            names.extend((repo, "<none>", d) for d in repo_digest_list)
        else:
            names.append((repo, "<none>", ""))
    return names


def _image_row(img: Mapping[str, Any], repo: str, tag: str, digest: str, trunc: bool, now: float) -> dict[str, str]:
    from berth.cli.render import go_time_string, human_size, short_id, since

    ident = str(img.get("Id", ""))
    created = int(img.get("Created") or 0)
    size = int(img.get("Size") or 0)
    shared = int(img.get("SharedSize", -1) if img.get("SharedSize") is not None else -1)
    containers = int(img.get("Containers", -1) if img.get("Containers") is not None else -1)
    virtual = int(img.get("VirtualSize") or size)
    return {
        "Containers": "N/A" if containers == -1 else str(containers),
        "CreatedAt": go_time_string(created),
        "CreatedSince": since(created, now),
        "Digest": digest,
        "ID": short_id(ident) if trunc else ident,
        "Repository": repo,
        "SharedSize": "N/A" if shared == -1 else human_size(shared),
        "Size": human_size(size, 3),
        "Tag": tag,
        "UniqueSize": "N/A" if shared == -1 else human_size(size - shared),
        "VirtualSize": human_size(virtual),
    }


def _configure_ls(p: CommandParser) -> None:
    p.add_bool("-a", "--all", help="Show all images (default hides intermediate images)")
    p.add_bool("--digests", help="Show digests")
    add_filter(p)
    add_format(p)
    p.add_bool("--no-trunc", help="Don't truncate output")
    p.add_bool("-q", "--quiet", help="Only show image IDs")


def _ls(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    from berth.cli.command import filters_from
    from berth.client.http import encode_filters

    filters = filters_from(ns.filter)
    if ns.args:
        filters.setdefault("reference", []).append(ns.args[0])
    params: dict[str, Any] = {"all": True if ns.all else None,
                              "filters": encode_filters(filters) if filters else None}
    images = ctx.client.get("/images/json", params).json() or []
    source = ns.format
    if source in ("", "table"):
        source = "{{.ID}}" if ns.quiet else (IMAGES_DIGESTS_TABLE if ns.digests else IMAGES_TABLE)
    rows = image_rows(images, trunc=not ns.no_trunc, digests=ns.digests, now=time.time())
    render(ctx, source, rows, IMAGE_HEADERS)
    return 0


# ---- load / save / import -----------------------------------------------------------------------------

def _configure_load(p: CommandParser) -> None:
    p.add_argument("-i", "--input", default="", metavar="string", help="Read from tar archive file, instead of STDIN")
    p.add_bool("-q", "--quiet", help="Suppress the load output")
    p.add_argument("--platform", action="append", default=[], metavar="strings",
                   help="Load only the given platform(s)")


def _load(ctx: Context, ns: argparse.Namespace) -> int:
    if not ns.input and ctx.stdin_is_tty():
        raise CliError("requested load from stdin, but stdin is empty")
    quiet = ns.quiet or not ctx.stdout_is_tty()
    source = _open_input(ns.input) if ns.input else ctx.binary_stdin()
    try:
        params: dict[str, Any] = {"quiet": quiet, "platform": ns.platform or None}
        resp = ctx.client.post("/images/load", params, body=source,
                               headers={"Content-Type": "application/x-tar"}, stream=True)
    finally:
        if ns.input:
            source.close()
    with resp:
        show_stream(ctx, resp)
    return 0


def _configure_save(p: CommandParser) -> None:
    p.add_argument("-o", "--output", default="", metavar="string", help="Write to a file, instead of STDOUT")
    p.add_argument("--platform", action="append", default=[], metavar="strings",
                   help="Save only the given platform(s)")


def _save(ctx: Context, ns: argparse.Namespace) -> int:
    import os

    if not ns.output and ctx.stdout_is_tty():
        raise CliError("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    if ns.output:
        folder = os.path.dirname(os.path.abspath(ns.output))
        if not os.path.isdir(folder):
            raise CliError(f'failed to save image: invalid output path: directory "{folder}" does not exist')
        if os.path.isdir(ns.output):
            raise CliError(f'failed to save image: invalid output path: "{ns.output}" is a directory')
    params: dict[str, Any] = {"names": list(ns.args), "platform": ns.platform or None}
    with ctx.client.get("/images/get", params, stream=True) as resp:
        if not ns.output:
            sink = ctx.binary_stdout()
            for chunk in resp.iter_chunks(1 << 20):
                sink.write(chunk)
            sink.flush()
            return 0
        _write_atomically(ns.output, resp)
    return 0


def _write_atomically(path: str, resp: Response) -> None:
    """Like docker's CopyToFile: a temporary file beside the target, renamed over it when complete."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".berth_temp_", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as sink:
            for chunk in resp.iter_chunks(1 << 20):
                sink.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _configure_import(p: CommandParser) -> None:
    p.add_argument("-c", "--change", action="append", default=[], metavar="list",
                   help="Apply Dockerfile instruction to the created image")
    p.add_argument("-m", "--message", default="", metavar="string", help="Set commit message for imported image")
    p.add_argument("--platform", default="", metavar="string", help="Set platform if server is multi-platform capable")


def _import(ctx: Context, ns: argparse.Namespace) -> int:
    source = ns.args[0]
    repo = ns.args[1] if len(ns.args) > 1 else ""
    if repo:
        _parse_ref(repo)
    params: dict[str, Any] = {
        "fromSrc": source if source.startswith(("http://", "https://")) else "-",
        "repo": repo or None,
        "message": ns.message or None,
        "platform": ns.platform or None,
        "changes": ns.change or None,
    }
    opened = None
    body: Any = None
    if source == "-":
        body = ctx.binary_stdin()
    elif params["fromSrc"] == "-":
        opened = body = _open_input(source)
    try:
        resp = ctx.client.post("/images/create", params, body=body, stream=True)
    finally:
        if opened is not None:
            opened.close()
    with resp:
        show_stream(ctx, resp)
    return 0


def _bootstrap(ctx: Context, ns: argparse.Namespace) -> int:
    with ctx.client.post("/berth/images/bootstrap", {"image": ns.args[0]}, stream=True) as resp:
        show_stream(ctx, resp)
    return 0


# ---- tag / rm -----------------------------------------------------------------------------------------

def _parse_ref(text: str) -> Any:
    from berth.errors import BerthError
    from berth.oci.reference import parse

    try:
        return parse(text)
    except BerthError as err:
        raise CliError(f'Error parsing reference: "{text}" is not a valid repository/tag: {err}') from None


def _tag(ctx: Context, ns: argparse.Namespace) -> int:
    source, target = ns.args
    ref = _parse_ref(target)
    if ref.digest is not None:
        raise CliError("refusing to create a tag with a digest reference")
    ref = ref.with_default_tag()
    ctx.client.post(_path(source, "/tag"), {"repo": ref.name, "tag": ref.tag})
    return 0


def _configure_rm(p: CommandParser) -> None:
    p.add_bool("-f", "--force", help="Force removal of the image")
    p.add_bool("--no-prune", help="Do not delete untagged parents")
    p.add_argument("--platform", action="append", default=[], metavar="strings",
                   help="Remove only the given platform variant")


def _rm(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.client.http import DaemonUnreachable
    from berth.errors import BerthError, NotFound

    params: dict[str, Any] = {"force": True if ns.force else None, "noprune": True if ns.no_prune else None,
                              "platforms": ns.platform or None}
    errors: list[str] = []
    fatal = False
    for name in ns.args:
        try:
            items = ctx.client.delete(_path(name), params).json() or []
        except DaemonUnreachable:
            raise
        except BerthError as err:
            fatal = fatal or not isinstance(err, NotFound)
            errors.append(f"Error response from daemon: {err}")
            continue
        for item in items:
            if item.get("Deleted"):
                ctx.out(f"Deleted: {item['Deleted']}\n")
            else:
                ctx.out(f"Untagged: {item.get('Untagged', '')}\n")
    if errors:
        message = "\n".join(errors)
        if not ns.force or fatal:
            raise CliError(message)
        ctx.err(message + "\n")
    return 0


# ---- history / inspect / prune ------------------------------------------------------------------------

def history_rows(items: Sequence[Mapping[str, Any]], trunc: bool, human: bool, now: float) -> list[dict[str, str]]:
    """docker's historyContext fields for each layer record."""
    from berth.cli.render import ellipsis, human_size, local_time, rfc3339, short_id, since

    rows = []
    for item in items:
        ident = str(item.get("Id", ""))
        created = int(item.get("Created") or 0)
        created_at = rfc3339(local_time(created))
        created_by = str(item.get("CreatedBy") or "").replace("\t", " ")
        size = int(item.get("Size") or 0)
        rows.append({
            "ID": short_id(ident) if trunc and ident != "<missing>" else ident,
            "CreatedSince": since(created, now) if human else created_at,
            "CreatedAt": created_at,
            "CreatedBy": ellipsis(created_by, 45) if trunc else created_by,
            "Size": human_size(size, 3) if human else str(size),
            "Comment": str(item.get("Comment") or ""),
        })
    return rows


def _configure_history(p: CommandParser) -> None:
    add_format(p)
    p.add_bool("-H", "--human", default=True, help="Print sizes and dates in human readable format")
    p.add_bool("--no-trunc", help="Don't truncate output")
    p.add_bool("-q", "--quiet", help="Only show image IDs")
    p.add_argument("--platform", default="", metavar="string", help="Show history for the given platform")


def _history(ctx: Context, ns: argparse.Namespace) -> int:
    import time

    params: dict[str, Any] = {"platform": ns.platform or None}
    items = ctx.client.get(_path(ns.args[0], "/history"), params).json() or []
    source = ns.format
    if source in ("", "table"):
        source = "{{.ID}}" if ns.quiet else (HISTORY_TABLE if ns.human else HISTORY_RAW_TABLE)
    render(ctx, source, history_rows(items, not ns.no_trunc, ns.human, time.time()), HISTORY_HEADERS)
    return 0


def _configure_inspect(p: CommandParser) -> None:
    from berth.cli.objects import add_inspect_format

    add_inspect_format(p)
    p.add_argument("--platform", default="", metavar="string", help="Inspect a specific platform")


def _inspect(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.objects import inspect_each

    params: dict[str, Any] = {"platform": ns.platform or None}
    return inspect_each(ctx, ns.args, lambda name: ctx.client.get(_path(name, "/json"), params).json(), ns.format)


def _configure_prune(p: CommandParser) -> None:
    from berth.cli.objects import add_prune_flags

    add_prune_flags(p, all_help="Remove all unused images, not just dangling ones")


def _prune(ctx: Context, ns: argparse.Namespace) -> int:
    from berth.cli.command import filters_from
    from berth.cli.objects import prune, show_deleted, show_reclaimed

    filters = filters_from(ns.filter)
    filters.setdefault("dangling", []).append("false" if ns.all else "true")
    report = prune(ctx, "images", filters, PRUNE_ALL_WARNING if ns.all else PRUNE_DANGLING_WARNING, ns.force)
    if report is None:
        return 0
    lines = [f"untagged: {item['Untagged']}" if item.get("Untagged") else f"deleted: {item.get('Deleted', '')}"
             for item in report.get("ImagesDeleted") or []]
    show_deleted(ctx, "Deleted Images:", lines)
    show_reclaimed(ctx, report)
    return 0


# ---- pull / push / login / logout -----------------------------------------------------------------------

HUB_SERVER = "https://index.docker.io/v1/"


def _config_path() -> Any:
    import os
    from pathlib import Path

    base = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def read_docker_config() -> dict[str, Any]:
    import json

    try:
        doc = json.loads(_config_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise CliError(f"loading config file: {err}") from None
    return doc if isinstance(doc, dict) else {}


def _write_config(doc: dict[str, Any]) -> None:
    import json
    import os

    path = _config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent="\t") + "\n")
    os.replace(tmp, path)


def server_key(domain: str) -> str:
    """The key docker uses in config.json for a registry (Docker Hub's is its old v1 URL)."""
    return HUB_SERVER if domain == "docker.io" else domain


def _helper_for(doc: Mapping[str, Any], key: str) -> str:
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
        return str(helpers[key])
    store = doc.get("credsStore")
    return store if isinstance(store, str) else ""


def _helper(name: str, action: str, payload: str) -> str:
    """Run ``docker-credential-<name> get|store|erase`` (the docker credential helper protocol)."""
    import subprocess

    verb = {"get": "getting", "store": "storing", "erase": "erasing"}[action]
    try:
        done = subprocess.run([f"docker-credential-{name}", action], input=payload.encode(), capture_output=True,
                              timeout=60, check=False)
    except OSError as err:
        raise CliError(f"error {verb} credentials - err: {err}, out: ``") from None
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        if action == "get" and "credentials not found" in out.lower():
            return ""
        raise CliError(f"error {verb} credentials - err: exit status {done.returncode}, out: `{out}`")
    return out


def load_credentials(domain: str) -> dict[str, str]:
    """The AuthConfig for a registry from config.json (``auths`` base64 user:pass, or a credential helper)."""
    import base64
    import json

    doc = read_docker_config()
    key = server_key(domain)
    helper = _helper_for(doc, key)
    if helper:
        out = _helper(helper, "get", key)
        if not out:
            return {}
        try:
            found = json.loads(out)
        except ValueError:
            raise CliError(f"credential helper {helper}: invalid answer") from None
        user, secret = str(found.get("Username") or ""), str(found.get("Secret") or "")
        if user == "<token>":
            return {"identitytoken": secret, "serveraddress": key}
        return {"username": user, "password": secret, "serveraddress": key}
    auths = doc.get("auths") or {}
    entry = auths.get(key) if isinstance(auths, dict) else None
    if not isinstance(entry, dict):
        return {}
    out_doc: dict[str, str] = {"serveraddress": key}
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        user, _, password = base64.b64decode(entry["auth"]).decode(errors="replace").partition(":")
        out_doc.update(username=user, password=password)
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        out_doc["identitytoken"] = entry["identitytoken"]
    return out_doc


def store_credentials(domain: str, username: str, password: str, identity_token: str = "") -> None:
    import base64
    import json

    doc = read_docker_config()
    key = server_key(domain)
    helper = _helper_for(doc, key)
    if helper:
        user, secret = ("<token>", identity_token) if identity_token else (username, password)
        _helper(helper, "store", json.dumps({"ServerURL": key, "Username": user, "Secret": secret}))
        return
    auths = doc.setdefault("auths", {})
    entry: dict[str, str] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    if identity_token:
        entry = {"identitytoken": identity_token}
    auths[key] = entry
    _write_config(doc)


def erase_credentials(domain: str) -> bool:
    doc = read_docker_config()
    key = server_key(domain)
    helper = _helper_for(doc, key)
    if helper:
        _helper(helper, "erase", key)
        return True
    auths = doc.get("auths") or {}
    if not isinstance(auths, dict) or key not in auths:
        return False
    del auths[key]
    _write_config(doc)
    return True


def registry_auth_header(domain: str) -> dict[str, str]:
    """``X-Registry-Auth`` for a registry: base64url JSON of the stored AuthConfig (``{}`` when none)."""
    import base64
    import json

    creds = load_credentials(domain)
    return {"X-Registry-Auth": base64.urlsafe_b64encode(json.dumps(creds).encode()).decode()}


def _configure_pull(p: CommandParser) -> None:
    p.add_bool("-q", "--quiet", help="Suppress verbose output")
    p.add_argument("--platform", default="", metavar="string", help="Set platform if server is multi-platform capable")
    p.add_bool("-a", "--all-tags", help="Download all tagged images in the repository")


def _pull(ctx: Context, ns: argparse.Namespace) -> int:
    ref = _parse_ref(ns.args[0])
    if ns.all_tags:
        raise CliError("--all-tags is not supported by berth yet")
    if ref.tag is None and ref.digest is None:
        ctx.out("Using default tag: latest\n")
        ref = ref.with_default_tag()
    tag = str(ref.digest) if ref.digest is not None else ref.tag
    params: dict[str, Any] = {"fromImage": ref.familiar_name, "tag": tag, "platform": ns.platform or None}
    with ctx.client.post("/images/create", params, headers=registry_auth_header(ref.domain), stream=True) as resp:
        if ns.quiet:
            import io

            from berth.cli.progress import display

            display(resp.iter_json(), io.StringIO(), False)
        else:
            show_stream(ctx, resp)
    ctx.out(f"{ref}\n")
    return 0


def _configure_push(p: CommandParser) -> None:
    p.add_bool("-a", "--all-tags", help="Push all tags of an image to the repository")
    p.add_bool("-q", "--quiet", help="Suppress verbose output")


def _push(ctx: Context, ns: argparse.Namespace) -> int:
    ref = _parse_ref(ns.args[0])
    if ref.digest is not None:
        raise CliError("cannot push a digest reference")
    if ref.tag is None and not ns.all_tags:
        ctx.out("Using default tag: latest\n")
        ref = ref.with_default_tag()
    params: dict[str, Any] = {"tag": ref.tag or None}
    with ctx.client.post(_path(ref.name, "/push"), params, headers=registry_auth_header(ref.domain),
                         stream=True) as resp:
        if ns.quiet:
            import io

            from berth.cli.progress import display

            display(resp.iter_json(), io.StringIO(), False)
            ctx.out(f"{ref.familiar()}\n")
        else:
            show_stream(ctx, resp)
    return 0


def _configure_login(p: CommandParser) -> None:
    p.add_argument("-u", "--username", default="", metavar="string", help="Username")
    p.add_argument("-p", "--password", default="", metavar="string", help="Password")
    p.add_bool("--password-stdin", help="Take the password from stdin")


def _login_domain(args: list[str]) -> str:
    """``https://index.docker.io/v1/``, ``http://localhost:5000`` or ``localhost:5000`` → the registry's domain."""
    if not args:
        return "docker.io"
    text = args[0].strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    hub = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
    return "docker.io" if not text or text in hub else text


def _login(ctx: Context, ns: argparse.Namespace) -> int:
    domain = _login_domain(ns.args)
    password = ns.password
    if ns.password_stdin:
        if ns.password:
            raise CliError("--password and --password-stdin are mutually exclusive")
        if not ns.username:
            raise CliError("Must provide --username with --password-stdin")
        password = ctx.stdin.read().rstrip("\r\n")
    username = ns.username
    if not username or not password:
        stored = load_credentials(domain)
        username = username or stored.get("username", "")
        password = password or stored.get("password", "")
    if not username or not password:
        raise CliError("Error: Cannot perform an interactive login from a non TTY device: use -u and "
                       "--password-stdin")
    if ns.password and not ns.password_stdin:
        ctx.err("WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n")
    answer = ctx.client.post("/auth", json={"username": username, "password": password,
                                            "serveraddress": server_key(domain)}).json() or {}
    store_credentials(domain, username, password, str(answer.get("IdentityToken") or ""))
    ctx.out(f"{answer.get('Status') or 'Login Succeeded'}\n")
    return 0


def _logout(ctx: Context, ns: argparse.Namespace) -> int:
    domain = _login_domain(ns.args)
    key = server_key(domain)
    if not erase_credentials(domain):
        ctx.out(f"Not logged in to {key}\n")
        return 0
    ctx.out(f"Removing login credentials for {key}\n")
    return 0


# ---- registration -------------------------------------------------------------------------------------

LS = Command("ls", "List images", "[OPTIONS] [REPOSITORY[:TAG]]", _ls, _configure_ls, Arity(0, 1),
             aliases=("list",), metavar="REPOSITORY[:TAG]")
LOAD = Command("load", "Load an image from a tar archive or STDIN", "[OPTIONS]", _load, _configure_load)
SAVE = Command(
    "save",
    "Save one or more images to a tar archive (streamed to STDOUT by default)",
    "[OPTIONS] IMAGE [IMAGE...]",
    _save,
    _configure_save,
    Arity(1, None),
    metavar="IMAGE",
)
TAG = Command(
    "tag",
    "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
    "SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
    _tag,
    None,
    Arity(2, 2),
    metavar="IMAGE",
)
RM = Command(
    "rm",
    "Remove one or more images",
    "[OPTIONS] IMAGE [IMAGE...]",
    _rm,
    _configure_rm,
    Arity(1, None),
    aliases=("remove",),
    metavar="IMAGE",
)
HISTORY = Command(
    "history",
    "Show the history of an image",
    "[OPTIONS] IMAGE",
    _history,
    _configure_history,
    Arity(1, 1),
    metavar="IMAGE",
)
# docker import checks only the minimum (RequiresMinArgs): arguments past the repository are ignored
IMPORT = Command(
    "import",
    "Import the contents from a tarball to create a filesystem image",
    "[OPTIONS] file|URL|- [REPOSITORY[:TAG]]",
    _import,
    _configure_import,
    Arity(1, None),
    metavar="SOURCE",
)
INSPECT = Command(
    "inspect",
    "Display detailed information on one or more images",
    "[OPTIONS] IMAGE [IMAGE...]",
    _inspect,
    _configure_inspect,
    Arity(1, None),
    metavar="IMAGE",
)
PRUNE = Command("prune", "Remove unused images", "[OPTIONS]", _prune, _configure_prune)
PULL = Command("pull", "Download an image from a registry", "[OPTIONS] NAME[:TAG|@DIGEST]", _pull, _configure_pull,
               Arity(1, 1), metavar="NAME")
PUSH = Command("push", "Upload an image to a registry", "[OPTIONS] NAME[:TAG]", _push, _configure_push, Arity(1, 1),
               metavar="NAME")
LOGIN = Command("login", "Authenticate to a registry", "[OPTIONS] [SERVER]", _login, _configure_login, Arity(0, 1),
                metavar="SERVER")
LOGOUT = Command("logout", "Log out from a registry", "[SERVER]", _logout, None, Arity(0, 1), metavar="SERVER")
BOOTSTRAP = Command("bootstrap", "Make a base image from local sources (busybox, debian, python)", "NAME",
                    _bootstrap, None, Arity(1, 1), metavar="NAME")

COMMANDS = (
    LS.renamed("images"),
    LOAD,
    SAVE,
    TAG,
    RM.renamed("rmi"),
    HISTORY,
    IMPORT,
    PULL,
    PUSH,
    LOGIN,
    LOGOUT,
)
GROUPS = (
    Group("image", "Manage images", (BOOTSTRAP, HISTORY, IMPORT, INSPECT, LOAD, LS, PRUNE, PULL, PUSH, RM, SAVE,
                                     TAG)),
)
