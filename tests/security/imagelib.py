"""A small container image that both test users can read (built as root with umoci)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import testimages


def build_readable_image(workdir: Path, extra: list[tuple] = (), tag: str = "img") -> str:
    """busybox plus one layer of ``extra`` entries (see ``testimages._tar``) in an OCI layout
    under ``workdir`` that every user may read; returns its skopeo reference."""
    layout = workdir / "layout"
    testimages.new_layout(layout, tag)
    testimages.add_layer(layout, tag, testimages._busybox_entries(), workdir / "layers")
    if extra:
        testimages.add_layer(layout, tag, list(extra), workdir / "layers")
    testimages.configure(layout, tag, cmd=["/bin/sh"])
    subprocess.run(["chmod", "-R", "a+rX", str(workdir)], check=True)
    return f"oci:{layout}:{tag}"
