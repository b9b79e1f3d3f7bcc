"""The per-VM seed: a cloud-init NoCloud iso9660 image (volume id ``cidata``).

Files in the image:

``meta-data``
    ``instance-id``, ``local-hostname`` and ``public-keys`` (read by cloud-init).
``vendor-data``
    a ``#cloud-config`` that sets the host name, the authorized keys and the host key pair
    (``ssh_keys``), so that images running cloud-init present the host key that pcocc
    published to the user's known_hosts. cloud-init merges it under the user-data, which
    therefore stays the user's own, unchanged.
``user-data``
    the template's user-data as given, or an empty ``#cloud-config``.
``network-config`` (only with private networks, from ``extra_files``)
    a version 2 network configuration matching the NICs by MAC (see pcocc.net.private).
``pcocc/authorized_keys``, ``pcocc/ssh_host_ed25519_key[.pub]``
    the same keys as plain files, for small images without cloud-init (the test VM's init
    reads these).
``pcocc/mounts``
    the virtio-fs shares to mount, one ``TAG TARGET`` line each, for images without
    cloud-init; the vendor-data has them as cloud-init ``mounts`` entries (fstype
    ``virtiofs``). A user-data with its own ``mounts`` replaces that list.

pcocc attaches the seed as a read-only virtio disk (mounting it needs only the isofs and
cdrom modules, and no emulated CD drive).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pcocc import proc

VOLUME_ID = "cidata"


@dataclass(frozen=True)
class HostKey:
    """An OpenSSH ed25519 key pair (private key text, ``ssh-ed25519 AAAA...`` public line)."""

    private: str
    public: str


@dataclass(frozen=True)
class SeedSpec:
    hostname: str
    instance_id: str
    authorized_keys: tuple[str, ...] = ()
    host_key: HostKey | None = None
    user_data: str | None = None
    #: virtio-fs shares the guest mounts: (tag, target directory)
    mounts: tuple[tuple[str, str], ...] = ()
    extra_files: dict[str, str] = field(default_factory=dict)  # path in the seed -> text


def generate_host_key(comment: str = "pcocc") -> HostKey:
    """A new ed25519 key pair made by ssh-keygen (one per virtual cluster)."""
    with tempfile.TemporaryDirectory(prefix="pcocc-hostkey-") as tmp:
        key = Path(tmp) / "key"
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key],
                 what="generate an ssh host key")
        return HostKey(key.read_text(), key.with_suffix(".pub").read_text().strip())


def seed_files(spec: SeedSpec) -> dict[str, str]:
    """The files of the seed image, by path (pure, for tests)."""
    keys = [k.strip() for k in spec.authorized_keys if k.strip()]
    meta: dict[str, object] = {"instance-id": spec.instance_id,
                               "local-hostname": spec.hostname}
    if keys:
        meta["public-keys"] = keys
    config: dict[str, object] = {"hostname": spec.hostname}
    if keys:
        config["ssh_authorized_keys"] = keys
    if spec.host_key:
        config["ssh_deletekeys"] = True
        config["ssh_keys"] = {"ed25519_private": spec.host_key.private,
                              "ed25519_public": spec.host_key.public}
    if spec.mounts:
        # nofail: a guest without virtiofs support still boots
        config["mounts"] = [[tag, target, "virtiofs", "defaults,nofail", "0", "0"]
                            for tag, target in spec.mounts]
    files = {
        "meta-data": yaml.safe_dump(meta, sort_keys=False),
        "vendor-data": "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False),
        "user-data": spec.user_data if spec.user_data is not None else "#cloud-config\n",
    }
    files["pcocc/authorized_keys"] = "".join(k + "\n" for k in keys)
    if spec.host_key:
        files["pcocc/ssh_host_ed25519_key"] = spec.host_key.private
        files["pcocc/ssh_host_ed25519_key.pub"] = spec.host_key.public + "\n"
    if spec.mounts:
        files["pcocc/mounts"] = "".join(f"{tag} {target}\n" for tag, target in spec.mounts)
    files.update(spec.extra_files)
    return files


def build_seed(spec: SeedSpec, dest: str | os.PathLike) -> Path:
    """Write the seed image of ``spec`` to ``dest`` (an iso9660 file, mode 0600)."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        for rel, text in seed_files(spec).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        staging = Path(tmp) / "seed.iso"
        proc.run(["genisoimage", "-quiet", "-output", staging, "-volid", VOLUME_ID,
                  "-joliet", "-rock", root], what="build the cloud-init seed image")
        os.chmod(staging, 0o600)
        os.replace(staging, dest)
    return dest
