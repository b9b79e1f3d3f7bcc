"""The container images of the configured repositories by manifest digest, the key of the
container cache (:mod:`pcocc.repo.cache`): which digest an image reference stands for, and
which cache entries still belong to an image (``pcocc image cache delete`` and ``gc``)."""

from __future__ import annotations

from pcocc.errors import UsageError
from pcocc.repo.model import KIND_CTR
from pcocc.repo.reposet import RepoSet


def resolve_container_digest(config, uri: str) -> str:
    """The manifest digest of the container image ``uri`` ([REPO:]NAME[@REV] or an ID
    prefix) in the repositories of ``config`` (a loaded ``Config``); the container cache
    is keyed by it.

    :raise NotFound: no such image
    :raise UsageError: the image is a VM image
    """
    _repo, meta = RepoSet(config.repos).resolve(uri)
    if meta.kind != KIND_CTR or not meta.oci:
        raise UsageError(f"{meta.ref} is a VM image: the container cache holds only "
                         "container images")
    return meta.oci["manifest_digest"]


def container_refs_by_digest(config) -> dict[str, list[str]]:
    """Manifest digest -> the references (``repo:name@rev``) of every revision of every
    container image in every configured repository (the container cache is keyed by
    digest; cache entries of other digests belong to deleted images).

    A repository that cannot be read raises (rather than making its images look dead).
    """
    refs: dict[str, list[str]] = {}
    for repo in RepoSet(config.repos).repos:
        for meta in repo.images(all_revisions=True):
            if meta.kind == KIND_CTR and meta.oci:
                refs.setdefault(meta.oci["manifest_digest"], []).append(meta.ref)
    return refs


def live_container_digests(config) -> set[str]:
    """Manifest digests of every revision of every container image in every configured
    repository (see :func:`container_refs_by_digest`)."""
    return set(container_refs_by_digest(config))


__all__ = ["container_refs_by_digest", "live_container_digests", "resolve_container_digest"]
