"""Image metadata: one JSON file per revision, canonical so that its digest is the image ID."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from pcocc.errors import Corrupt
from pcocc.repo.digest import DIGEST_RE, sha256_hex
from pcocc.repo.layout import NAME_RE
from pcocc.repo.model import KIND_CTR, KIND_VM, BlobRef, OciImage, VmLayers

META_VERSION = 1
ID_PREFIX = "sha256-"


@dataclass(frozen=True)
class ImageMeta:
    """One revision of an image. ``repo`` and ``image_id`` are not stored: they come from
    where the file was read and from its bytes."""

    name: str
    revision: int
    kind: str
    owner: str
    created: float  # seconds since the epoch (UTC)
    blobs: tuple[BlobRef, ...]
    description: str = ""
    source: str = ""
    parent: str | None = None  # "name@rev" this revision was derived from
    vm: dict[str, Any] | None = None  # {"layers": [digest, ...], "virtual_size": int}
    oci: dict[str, Any] | None = None  # {"manifest_digest", "manifest", "config"}
    repo: str = field(default="", compare=False)
    #: the metadata file's bytes, whose sha256 is the image ID
    stored: bytes = field(default=b"", compare=False, repr=False)

    @functools.cached_property
    def image_id(self) -> str:
        """``sha256-<hex>`` of the stored bytes, hashed on first use (a warm ``pcocc run``
        reads metadata but needs no ID: it does not load OpenSSL for it)."""
        return ID_PREFIX + sha256_hex(self.stored) if self.stored else ""

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.name}@{self.revision}"

    @property
    def short_id(self) -> str:
        return self.image_id[: len(ID_PREFIX) + 12]

    @property
    def type_label(self) -> str:
        """The image type as ``pcocc image`` shows it: ``vm`` or ``cont``."""
        return "vm" if self.kind == KIND_VM else "cont"

    def describe(self) -> dict[str, Any]:
        """What ``pcocc image show`` tells about this revision (its JSON form): the stored
        fields, plus the virtual size and layers of a VM image, or what the OCI manifest and
        config say of a container image (platform, entrypoint, env, labels...)."""
        d: dict[str, Any] = {
            "name": self.name, "repo": self.repo, "revision": self.revision,
            "id": self.image_id, "type": self.type_label, "owner": self.owner,
            "created": self.created, "size": self.size, "description": self.description,
            "source": self.source, "parent": self.parent,
        }
        if self.vm is not None:
            d["virtual_size"] = self.vm["virtual_size"]
            d["layers"] = self.vm["layers"]
        if self.oci is not None:
            image_cfg = self.oci.get("config") or {}
            cfg = image_cfg.get("config") or {}
            manifest = self.oci.get("manifest") or {}
            d["manifest_digest"] = self.oci.get("manifest_digest")
            d["config_digest"] = (manifest.get("config") or {}).get("digest")
            d["layers"] = [layer.get("digest") for layer in manifest.get("layers", [])]
            d["platform"] = "/".join(str(image_cfg[k]) for k in ("os", "architecture", "variant")
                                     if image_cfg.get(k))
            d["entrypoint"] = cfg.get("Entrypoint")
            d["cmd"] = cfg.get("Cmd")
            d["workdir"] = cfg.get("WorkingDir") or ""
            d["user"] = cfg.get("User") or ""
            d["env"] = cfg.get("Env") or []
            d["labels"] = cfg.get("Labels") or {}
        d["blobs"] = [{"digest": b.digest, "size": b.size, "media_type": b.media_type}
                      for b in self.blobs]
        return d

    def vm_layers(self) -> VmLayers:
        if self.kind != KIND_VM or self.vm is None:
            raise Corrupt(f"image {self.ref} is not a VM image")
        by_digest = {b.digest: b for b in self.blobs}
        return VmLayers([by_digest[d] for d in self.vm["layers"]], self.vm["virtual_size"])

    def oci_image(self) -> OciImage:
        if self.kind != KIND_CTR or self.oci is None:
            raise Corrupt(f"image {self.ref} is not a container image")
        return OciImage(self.oci["manifest_digest"], self.oci["manifest"], self.oci["config"],
                        list(self.blobs))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": META_VERSION,
            "name": self.name,
            "revision": self.revision,
            "kind": self.kind,
            "owner": self.owner,
            "created": self.created,
            "description": self.description,
            "source": self.source,
            "parent": self.parent,
            "blobs": [
                {"digest": b.digest, "size": b.size, "media_type": b.media_type}
                for b in self.blobs
            ],
        }
        if self.vm is not None:
            d["vm"] = self.vm
        if self.oci is not None:
            d["oci"] = self.oci
        return d

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, UTF-8; its sha256 is the image ID."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode() + b"\n"

    def with_revision(self, revision: int) -> ImageMeta:
        return replace(self, revision=revision)

    @classmethod
    def from_bytes(cls, data: bytes, *, repo: str, where: str) -> ImageMeta:
        """Parse and check a metadata file; anything unexpected is Corrupt naming ``where``."""
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("version") != META_VERSION:
                raise ValueError("unknown metadata version")
            if not NAME_RE.match(d["name"]) or not isinstance(d["revision"], int):
                raise ValueError("bad name or revision")
            if d["kind"] not in (KIND_VM, KIND_CTR):
                raise ValueError(f"bad kind {d['kind']!r}")
            blobs = []
            for b in d["blobs"]:
                if not DIGEST_RE.match(b["digest"]) or not isinstance(b["size"], int):
                    raise ValueError(f"bad blob entry {b!r}")
                blobs.append(BlobRef(b["digest"], b["size"], b.get("media_type", "")))
            vm = d.get("vm")
            if d["kind"] == KIND_VM:
                if not isinstance(vm, dict) or not vm.get("layers"):
                    raise ValueError("VM image without layers")
                known = {b.digest for b in blobs}
                if any(layer not in known for layer in vm["layers"]):
                    raise ValueError("VM layer not listed in blobs")
            oci = d.get("oci")
            if d["kind"] == KIND_CTR and not isinstance(oci, dict):
                raise ValueError("container image without OCI manifest")
            return cls(
                name=d["name"], revision=d["revision"], kind=d["kind"],
                owner=str(d.get("owner", "")), created=float(d.get("created", 0)),
                blobs=tuple(blobs), description=str(d.get("description") or ""),
                source=str(d.get("source") or ""), parent=d.get("parent"),
                vm=vm, oci=oci, repo=repo,
                stored=data,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise Corrupt(f"{where}: invalid image metadata ({err})",
                          hint="run 'pcocc image repo fsck'") from err
