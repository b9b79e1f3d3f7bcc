"""The configuration cache seen from a second process."""

from __future__ import annotations

import subprocess
import sys


def test_second_load_skips_yaml_and_gives_the_same_config(pcocc_env):
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("templates:\n  a:\n    image: x\n    description: '%{user}'\n")
    code = (
        f"from pcocc.config import load_config; c = load_config({str(pcocc_env['system'])!r}, "
        f"{str(pcocc_env['user'])!r}); print(c.templates, c.origins[('templates', 'templates',"
        " 'a', 'image')])"
    )
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"

    def run() -> tuple[str, set[str]]:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        return out[0], set(out[1].split())

    first, mods = run()
    assert "yaml" in mods
    assert list((pcocc_env["home"] / ".cache" / "pcocc" / "config-docs").iterdir())
    again, mods = run()
    assert again == first and first.endswith("templates.yaml:3")  # same data and positions
    assert "yaml" not in mods
