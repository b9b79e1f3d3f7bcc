"""Parsed and valid configuration files are reused only while their text is unchanged."""

from pcocc.config import load_config


def _load(env):
    return load_config(str(env["system"]), str(env["user"]))


def test_edited_file_is_parsed_and_checked_again(pcocc_env):
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("templates:\n  a: {image: x}\n")
    assert _load(pcocc_env).templates["a"]["image"] == "x"
    f.write_text("templates:\n  a: {image: y}\n")
    assert _load(pcocc_env).templates["a"]["image"] == "y"
    f.write_text("templates:\n  a: {imag: y}\n")
    try:
        _load(pcocc_env)
    except Exception as err:  # noqa: BLE001
        assert "unknown key 'imag'" in str(err)
    else:
        raise AssertionError("an invalid edit was not reported")


def test_placeholders_are_expanded_on_every_load(pcocc_env, monkeypatch):
    (pcocc_env["system"] / "templates.yaml").write_text(
        "templates:\n  a: {image: x, description: '%{homedir}'}\n"
    )
    assert _load(pcocc_env).templates["a"]["description"] == str(pcocc_env["home"])
    other = pcocc_env["home"] / "other"
    monkeypatch.setenv("HOME", str(other))
    monkeypatch.setenv("XDG_CACHE_HOME", str(pcocc_env["home"] / ".cache"))
    assert _load(pcocc_env).templates["a"]["description"] == str(other)


def test_unmarshallable_data_is_not_cached_but_loads(pcocc_env):
    (pcocc_env["system"] / "templates.yaml").write_text(
        "templates:\n  a: {image: x, description: 2024-01-02}\n"
    )
    try:
        _load(pcocc_env)
    except Exception as err:  # noqa: BLE001 - a date may be refused by the schema
        assert "templates.a.description" in str(err)
    cache = pcocc_env["home"] / ".cache" / "pcocc" / "config-docs"
    assert not cache.exists() or not list(cache.iterdir())


def test_damaged_cache_entries_are_ignored(pcocc_env):
    (pcocc_env["system"] / "templates.yaml").write_text("templates:\n  a: {image: x}\n")
    assert _load(pcocc_env).templates["a"]["image"] == "x"
    entries = list((pcocc_env["home"] / ".cache" / "pcocc" / "config-docs").iterdir())
    assert entries
    for junk in (b"", b"\x00garbage", __import__("marshal").dumps(("other", 1))):
        for entry in entries:
            entry.write_bytes(junk)
        assert _load(pcocc_env).templates["a"]["image"] == "x"
