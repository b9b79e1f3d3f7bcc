"""``pcocc image cat-manifest`` and ``extract``/``render``: parse, call, print."""

from __future__ import annotations

from pathlib import Path

import click

from pcocc.cli.context import Session, pass_session


def _repos(session: Session):
    from pcocc.repo.reposet import RepoSet

    return RepoSet(session.config.repos)


@click.command("cat-manifest")
@click.option("--pretty-print", is_flag=True, help="Indent the JSON.")
@click.argument("image_uri", metavar="IMAGE")
@pass_session
def cat_manifest(session: Session, image_uri: str, pretty_print: bool) -> None:
    """Print what IMAGE is made of, as JSON.

    A container image: its OCI manifest and config. A VM image: its layer chain (base
    first) and metadata.
    """
    from pcocc.repo.extract import format_json, manifest_document

    _, meta = _repos(session).resolve(image_uri)
    click.echo(format_json(manifest_document(meta), pretty=pretty_print))


def _tree_command(name: str, render: bool, doc: str) -> click.Command:
    @click.option("--rootfs-only", is_flag=True,
                  help="DIR is the root filesystem itself (no manifest, no rootfs/).")
    @click.option("--overwrite", is_flag=True,
                  help="Replace DIR if it exists (the new tree takes its place in one rename).")
    @click.argument("image_uri", metavar="IMAGE")
    @click.argument("dest", metavar="DIR", type=click.Path(path_type=Path))
    @pass_session
    def command(session: Session, image_uri: str, dest: Path, rootfs_only: bool,
                overwrite: bool) -> None:
        from pcocc.repo.extract import write_tree

        meta, skipped = write_tree(_repos(session), image_uri, dest, render=render,
                                   rootfs_only=rootfs_only, overwrite=overwrite)
        for member in skipped:
            session.notify(f"skipped device node {member}")
        session.notify(f"{name}ed {meta.ref} into {dest}")

    command.__doc__ = doc
    return click.command(name)(command)


extract = _tree_command("extract", False, """Write the files container IMAGE adds to DIR.

    These are its top layer: the change the image makes to the layers below it (its
    base), applied to an empty directory, so its whiteouts have nothing to delete. 'pcocc image render' applies every layer.
    DIR must not exist (see --overwrite); it holds 'manifest' (as cat-manifest prints it)
    and 'rootfs/', or with --rootfs-only the files only. DIR is private (0700).
    VM images are refused: 'pcocc image export' writes their disk.
    """)

render = _tree_command("render", True, """Write the root filesystem of container IMAGE to DIR.

    Every layer is applied in order, whiteouts included: the files a container of IMAGE
    starts with. DIR must not exist (see --overwrite); it holds 'manifest' (as cat-manifest
    prints it) and 'rootfs/', or with --rootfs-only the files only. DIR is private (0700).
    VM images are refused: 'pcocc image export' writes their disk.
    """)
