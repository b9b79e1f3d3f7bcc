"""``pcocc image``: list, show, import, export, copy, delete, resize, repo, cache."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from pcocc.cli.app import LazyGroup
from pcocc.cli.commands import IMAGE_SUBGROUPS
from pcocc.cli.context import Session, pass_session
from pcocc.cli.output import human_size, local_time, print_table

def _repos(session: Session):
    from pcocc.repo.reposet import RepoSet

    return RepoSet(session.config.repos)


@click.group(cls=LazyGroup, lazy=IMAGE_SUBGROUPS)
def image() -> None:
    """List and manage VM and container images."""


@image.command("list")
@click.option("-R", "--repo", metavar="REPO", help="Only this repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--full", is_flag=True, help="Print whole image IDs.")
@click.argument("regex", required=False)
@pass_session
def list_(session: Session, repo: str | None, regex: str | None, as_json: bool,
          full: bool) -> None:
    """List images (latest revision), optionally only names matching REGEX.

    The ID column shows the first 12 digits of each image ID (commands take any unique
    prefix of an ID); --full shows them whole, as --json does.
    """
    images = sorted(_repos(session).images(repo, regex), key=lambda m: (m.name, m.repo))
    if as_json:
        click.echo(json.dumps([
            {"name": m.name, "type": m.type_label, "revision": m.revision, "repo": m.repo,
             "owner": m.owner, "created": m.created, "id": m.image_id, "size": m.size}
            for m in images], indent=2))
        return
    print_table(["NAME", "TYPE", "REVISION", "REPO", "OWNER", "DATE", "ID"],
                [[m.name, m.type_label, m.revision, m.repo, m.owner, local_time(m.created),
                  m.image_id if full else m.short_id] for m in images], rule=True)


def _argv(value: Any) -> str:
    return json.dumps(value) if value else "-"


def _show_items(title: str, items: list[str]) -> None:
    """One item per line: values may hold commas and spaces."""
    click.echo(f"  {title + ':':<14}{items[0] if items else '-'}")
    for item in items[1:]:
        click.echo(f"  {'':<14}{item}")


@image.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--full", is_flag=True, help="Print whole image IDs.")
@click.argument("image_uri", metavar="IMAGE")
@pass_session
def show(session: Session, image_uri: str, as_json: bool, full: bool) -> None:
    """Show every revision of IMAGE (or only IMAGE@REV)."""
    from pcocc.repo.uri import ImageUri

    repos = _repos(session)
    repo, meta = repos.resolve(image_uri)
    if image_uri.startswith("sha256-") or ImageUri.parse(image_uri).revision is not None:
        revisions = [meta]
    else:
        revisions = repo.images(f"^{re.escape(meta.name)}$", all_revisions=True)
    if as_json:
        click.echo(json.dumps([m.describe() for m in revisions], indent=2))
        return
    for i, m in enumerate(revisions):
        d = m.describe()
        if i:
            click.echo("")
        click.echo(f"{m.repo}:{m.name}@{m.revision}")
        rows = [
            ("id", m.image_id if full else m.short_id),
            ("type", d["type"]), ("owner", m.owner), ("date", local_time(m.created)),
            ("size", f"{human_size(m.size)} ({m.size} bytes)"),
        ]
        if "virtual_size" in d:
            vsize = d["virtual_size"]
            rows.append(("virtual size", f"{human_size(vsize)} ({vsize} bytes)"))
        rows += [("description", m.description or "-"), ("source", m.source or "-"),
                 ("parent", m.parent or "-")]
        if "manifest_digest" in d:
            rows += [("manifest", d["manifest_digest"]), ("config", d["config_digest"]),
                     ("platform", d["platform"] or "-"),
                     ("entrypoint", _argv(d["entrypoint"])), ("cmd", _argv(d["cmd"])),
                     ("workdir", d["workdir"] or "-"), ("user", d["user"] or "-")]
        for k, v in rows:
            click.echo(f"  {k + ':':<14}{v}")
        if "manifest_digest" in d:
            _show_items("env", d["env"])
            _show_items("labels", [f"{k}={v}" for k, v in sorted(d["labels"].items())])
        sizes = {b.digest: b.size for b in m.blobs}
        click.echo(f"  {'layers:':<14}{len(d['layers'])}")
        for digest in d["layers"]:
            click.echo(f"    {digest}  {human_size(sizes.get(digest, 0))}")


#: ``--insecure-options`` values: ``tls`` talks to a registry over plain HTTP or with an
#: unverified certificate; ``none`` insists on verified HTTPS even for loopback registries.
INSECURE_OPTIONS = ("none", "tls")
_INSECURE_HELP = ("For docker:// registries: 'tls' allows plain HTTP and unverified "
                  "certificates; 'none' insists on verified HTTPS (registries on this host "
                  "need no TLS by default).")


def _tls_verify(insecure_options: str | None) -> bool | None:
    """``--insecure-options=tls`` -> False (skopeo's --tls-verify=false); none -> None."""
    from pcocc.errors import UsageError

    if insecure_options is None:
        return None
    values = {v.strip() for v in insecure_options.split(",") if v.strip()}
    unknown = values - set(INSECURE_OPTIONS)
    if unknown or not values:
        raise UsageError(f"invalid --insecure-options value {insecure_options!r}",
                         hint="known values: " + ", ".join(INSECURE_OPTIONS))
    if len(values) > 1:
        raise UsageError("--insecure-options: 'none' and 'tls' contradict each other")
    return False if "tls" in values else True


@image.command("import")
@click.option("-t", "--type", "fmt", metavar="FMT", help="Format of SOURCE.")
@click.option("--description", default="", help="A description stored with the image.")
@click.option("--insecure-options", metavar="tls|none", help=_INSECURE_HELP)
@click.option("--allow-backing-in-repo", is_flag=True,
              help="(root) A VM image may have a backing file that is a blob of the "
                   "destination repository; the chain is flattened.")
@click.argument("source", metavar="[FORMAT:]SOURCE")
@click.argument("dest", metavar="DEST")
@pass_session
def import_(session: Session, source: str, dest: str, fmt: str | None,
            description: str, insecure_options: str | None,
            allow_backing_in_repo: bool) -> None:
    """Import SOURCE as the new image DEST ([REPO:]NAME).

    VM formats: raw, qcow2, qed, vdi, vmdk. Container formats (as a prefix, or -t):
    docker://REGISTRY/NAME[:TAG], docker-archive:FILE, docker-daemon:NAME, oci:DIR[:TAG],
    oci-archive:FILE, dir:DIR, and Singularity images (simg/sif, or a .sif/.simg file).
    """
    from pcocc.cli.fastimport import run_import

    run_import(session, source, dest, fmt, description, _tls_verify(insecure_options),
               allow_backing_in_repo)


@image.command("export")
@click.option("-t", "--type", "fmt", metavar="FMT", help="Format of DEST.")
@click.option("--insecure-options", metavar="tls|none", help=_INSECURE_HELP)
@click.argument("image_uri", metavar="IMAGE")
@click.argument("dest", metavar="[FORMAT:]DEST")
@pass_session
def export(session: Session, image_uri: str, dest: str, fmt: str | None,
           insecure_options: str | None) -> None:
    """Export IMAGE to the file (or container reference) DEST.

    VM images: raw, qcow2 (default), qed, vdi, vmdk. Container images: docker-archive:FILE,
    oci:DIR[:TAG], oci-archive:FILE, dir:DIR or docker://REGISTRY/NAME[:TAG].
    """
    from pcocc.cli.progress import progress_bar
    from pcocc.repo import ops

    tls_verify = _tls_verify(insecure_options)
    with progress_bar("exporting", enabled=session.show_progress) as report:
        ops.export_image(_repos(session), image_uri, dest, fmt=fmt, progress=report,
                         tls_verify=tls_verify)


@image.command("copy")
@click.argument("source", metavar="SOURCE")
@click.argument("dest", metavar="DEST")
@pass_session
def copy(session: Session, source: str, dest: str) -> None:
    """Copy image SOURCE to the new image DEST ([REPO:]NAME)."""
    from pcocc.cli.progress import progress_bar
    from pcocc.repo import ops

    with progress_bar("copying", enabled=session.show_progress) as report:
        meta = ops.copy_image(_repos(session), source, dest, progress=report)
    if not session.quiet:
        click.echo(f"copied to {meta.repo}:{meta.name}@{meta.revision}", err=True)


@image.command("delete")
@click.argument("image_uri", metavar="IMAGE[@REV]")
@pass_session
def delete(session: Session, image_uri: str) -> None:
    """Delete one revision, or every revision, of an image."""
    gone = _repos(session).delete(image_uri)
    if not session.quiet:
        for m in gone:
            click.echo(f"deleted {m.repo}:{m.name}@{m.revision}", err=True)


@image.command("resize")
@click.option("--shrink", is_flag=True, help="Allow a smaller size (only if no data is lost).")
@click.argument("image_uri", metavar="IMAGE")
@click.argument("size", metavar="SIZE")
@pass_session
def resize(session: Session, image_uri: str, size: str, shrink: bool) -> None:
    """Make a new revision of a VM image with virtual size SIZE (e.g. 20G)."""
    from pcocc.repo import ops

    meta = ops.resize_image(_repos(session), image_uri, ops.parse_size(size), shrink=shrink)
    if not session.quiet:
        click.echo(f"resized: {meta.repo}:{meta.name}@{meta.revision}", err=True)


@image.group("repo")
def repo() -> None:
    """List, collect and check repositories."""


@repo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_session
def repo_list(session: Session, as_json: bool) -> None:
    """List the configured repositories, in priority order."""
    repos = _repos(session).repos
    rows = [{"name": r.name, "path": str(r.path), "writable": r.is_writable,
             "origin": r.origin, "description": r.description} for r in repos]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(["NAME", "ACCESS", "PATH", "DESCRIPTION"],
                [[r["name"], "rw" if r["writable"] else "ro", r["path"], r["description"]]
                 for r in rows], rule=True)


def _parse_duration(text: str) -> float:
    from pcocc.errors import UsageError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise UsageError(f"invalid duration {text!r}", hint="write e.g. 0, 90s, 10m, 1h or 2d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@repo.command("gc")
@click.option("--grace-period", default="1h", show_default=True, metavar="DURATION",
              help="Keep unreferenced data younger than this (in-flight imports).")
@click.argument("name", metavar="[REPO]", required=False)
@pass_session
def repo_gc(session: Session, name: str | None, grace_period: str) -> None:
    """Remove data that no image uses (every writable repository by default)."""
    from pcocc.cli.progress import progress_bar
    from pcocc.repo import maintenance

    grace_s = _parse_duration(grace_period)
    repos = _repos(session)
    targets = [repos.get(name)] if name else [r for r in repos.repos if r.is_writable]
    for r in targets:
        with progress_bar(f"gc {r.name}", enabled=session.show_progress) as report:
            res = maintenance.gc(r, grace_s, progress=report)
        kept = f", kept {res.kept_young} younger than the grace period" if res.kept_young else ""
        click.echo(f"{r.name}: removed {res.blobs_removed} blobs and {res.tmp_removed} "
                   f"temporary entries, freed {res.bytes_freed} bytes "
                   f"({human_size(res.bytes_freed)}){kept}")


@repo.command("fsck")
@click.option("--quarantine", is_flag=True, help="Move damaged blobs aside.")
@click.argument("name", metavar="[REPO]", required=False)
@pass_session
def repo_fsck(session: Session, name: str | None, quarantine: bool) -> None:
    """Check every blob digest and every reference; exit 1 when something is wrong."""
    from pcocc.cli.progress import progress_bar
    from pcocc.errors import Corrupt
    from pcocc.repo import maintenance

    repos = _repos(session)
    targets = [repos.get(name)] if name else repos.repos
    problems = 0
    for r in targets:
        with progress_bar(f"fsck {r.name}", enabled=session.show_progress) as report:
            res = maintenance.fsck(r, quarantine=quarantine, progress=report)
        for p in res.problems:
            click.echo(f"{r.name}: {p}")
        for d in res.quarantined:
            click.echo(f"{r.name}: moved {d} to {r.layout.quarantine_dir}")
        click.echo(f"{r.name}: {res.blobs_checked} blobs, {res.images_checked} image revisions "
                   f"checked, {len(res.problems)} problems")
        problems += len(res.problems)
    if problems:
        raise Corrupt(f"{problems} problems found", hint="see above; run with --quarantine "
                      "to move damaged blobs aside, then delete the affected images")


@repo.command("import-legacy")
@click.option("-R", "--repo", "repo_name", metavar="REPO",
              help="Import into this repository [default: the first writable one].")
@click.argument("path", metavar="PATH", type=click.Path(file_okay=False, path_type=str))
@pass_session
def repo_import_legacy(session: Session, path: str, repo_name: str | None) -> None:
    """Import every image and revision of the pcocc 0.7 repository at PATH.

    Every blob is checked against its digest, VM layer chains are followed only inside
    PATH, and each image is imported whole or not at all: an image that fails a check is
    reported and skipped (exit status 1), the others are imported. Running it again
    skips the images it imported before.
    """
    from pathlib import Path

    from pcocc.errors import PcoccError
    from pcocc.repo.legacy_import import import_legacy

    target = _repos(session).for_write(repo_name)
    report = import_legacy(Path(path), target, notify=session.notify)
    for name, why in report.skipped:
        session.say(f"{name}: skipped: {why}")
    click.echo(f"{target.name}: {len(report.imported)} images imported, "
               f"{len(report.already)} already there, {len(report.skipped)} skipped")
    if report.skipped:
        raise PcoccError(f"{len(report.skipped)} images of {path} were not imported: "
                         + ", ".join(name for name, _ in report.skipped),
                         hint="see the reasons above; fix or delete them, then run it again")
