"""Commands that do not read the configuration must not pay for yaml and jsonschema."""

import subprocess
import sys

HEAVY = ("yaml", "jsonschema")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_help_imports_neither_yaml_nor_jsonschema():
    mods = _modules_after("from pcocc.cli.main import run_cli; run_cli(['--help'])")
    assert "pcocc.cli.main" in mods
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def test_importing_pcocc_config_is_light():
    mods = _modules_after("import pcocc.config, pcocc.templates")
    assert "pcocc.config" in mods and "pcocc.templates" in mods
    assert not {m for m in mods if m.split(".")[0] in HEAVY}
    assert "pcocc.config.loader" not in mods


def test_loading_without_any_file_skips_jsonschema(tmp_path):
    mods = _modules_after(
        f"from pcocc.config import load_config; load_config({str(tmp_path)!r}, {str(tmp_path)!r})"
    )
    assert "pcocc.config.loader" in mods
    assert "jsonschema" not in mods


def test_valid_files_are_checked_once(pcocc_env, tmp_path):
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("templates:\n  a: {image: x}\n")
    code = (
        f"from pcocc.config import load_config; load_config({str(pcocc_env['system'])!r}, "
        f"{str(pcocc_env['user'])!r})"
    )
    assert "jsonschema" in _modules_after(code)  # first time: validated, marker written
    markers = list((pcocc_env["home"] / ".cache" / "pcocc" / "config-checked").iterdir())
    assert len(markers) == 1
    assert "jsonschema" not in _modules_after(code)  # same bytes: not checked again
    # Any change to the file is checked again, and an invalid file is never remembered.
    f.write_text("templates:\n  a: {imag: x}\n")
    probe = code + "\nimport sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert "unknown key 'imag', did you mean 'image'?" in out.stderr
    assert len(list(markers[0].parent.iterdir())) == 1
