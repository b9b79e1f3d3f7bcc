"""The configured repositories in priority order (``RepoSet``): which one to write to, and
image look-up by name, ``name@repo`` or ID prefix across all of them."""

from __future__ import annotations

import re

from pcocc.config import RepoConfig
from pcocc.errors import NotFound, PermissionDenied, UsageError
from pcocc.repo.meta import ID_PREFIX, ImageMeta
from pcocc.repo.store import Repository, compile_regex
from pcocc.repo.uri import ImageUri


class RepoSet:
    """The configured repositories, in priority order."""

    def __init__(self, repos: list[RepoConfig]):
        self.repos = [Repository(r) for r in repos]

    def names(self) -> list[str]:
        return [r.name for r in self.repos]

    def get(self, name: str) -> Repository:
        for r in self.repos:
            if r.name == name:
                return r
        raise NotFound(f"repository '{name}' is not configured",
                       hint="known repositories: " + (", ".join(self.names()) or "none")
                       + " (see repos.yaml)")

    def for_write(self, name: str | None) -> Repository:
        """The named repository, or the first writable one; PermissionDenied if read-only."""
        if name is not None:
            repo = self.get(name)
            repo.require_writable()
            return repo
        for r in self.repos:
            if r.is_writable:
                return r
        if not self.repos:
            raise PermissionDenied("no repository is configured",
                                   hint="add one of your own to ~/.pcocc/repos.yaml")
        raise PermissionDenied(
            "every configured repository is read-only for you ("
            + ", ".join(self.names()) + ")",
            hint="add one of your own to ~/.pcocc/repos.yaml")

    def images(self, repo: str | None = None, regex: str | None = None) -> list[ImageMeta]:
        repos = [self.get(repo)] if repo else self.repos
        compile_regex(regex)
        out = []
        for r in repos:
            out += r.images(regex)
        return out

    def resolve(self, text: str) -> tuple[Repository, ImageMeta]:
        """Find an image by ``[REPO:]IMAGE[@REV]`` (repos searched in order) or ID prefix."""
        if text.startswith(ID_PREFIX):
            return self._by_id(text)
        uri = ImageUri.parse(text)
        repos = [self.get(uri.repo)] if uri.repo else self.repos
        for r in repos:
            if r.has_image(uri.name):
                return r, r.get(uri.name, uri.revision)
        where = f"repository '{uri.repo}'" if uri.repo else "any repository"
        raise NotFound(f"image '{text}' not found in {where}",
                       hint="run 'pcocc image list' to see the images")

    def _by_id(self, prefix: str) -> tuple[Repository, ImageMeta]:
        if len(prefix) <= len(ID_PREFIX) or not re.fullmatch(r"sha256-[0-9a-f]+", prefix):
            raise UsageError(f"invalid image ID {prefix!r}", hint="IDs look like sha256-1a2b3c...")
        found = []
        for r in self.repos:
            found += [(r, m) for m in r.images(all_revisions=True)
                      if m.image_id.startswith(prefix)]
        if not found:
            raise NotFound(f"no image has an ID starting with {prefix}")
        if len(found) > 1:
            raise UsageError(f"image ID prefix {prefix} is ambiguous ({len(found)} images)",
                             hint="give more digits")
        return found[0]

    def delete(self, text: str) -> list[ImageMeta]:
        """Delete ``[REPO:]IMAGE`` (every revision) or ``[REPO:]IMAGE@REV`` (that one)."""
        if text.startswith(ID_PREFIX):
            repo, meta = self._by_id(text)
            return repo.delete(meta.name, meta.revision)
        uri = ImageUri.parse(text)
        repo, meta = self.resolve(str(ImageUri(uri.name, uri.repo)))
        return repo.delete(uri.name, uri.revision)


__all__ = ["RepoSet"]
