"""Man pages against the click definitions: every visible command and group has a page,
and every option of a command is on its page. ``pcocc help`` without ``man``."""

from __future__ import annotations

import click
import pytest

from pcocc.cli import manpages
from pcocc.cli.app import cli
from pcocc.cli.main import run_cli


def _walk(cmd: click.Command, ctx: click.Context, path: tuple[str, ...]):
    """The click tree, walked here independently of the generator."""
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx,
                                                **sub.context_settings), (*path, name))


def _tree():
    root = click.Context(cli, info_name="pcocc", **cli.context_settings)
    return list(_walk(cli, root, ("pcocc",)))


def _unroff(text: str) -> str:
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def test_every_command_and_group_has_a_page():
    pages = {p.name for p in manpages.all_pages()}
    expected = {"-".join(path) for path, _cmd, _ctx in _tree()}
    assert pages == expected
    # the pages the issue names, and a group two levels down
    assert {"pcocc", "pcocc-alloc", "pcocc-image", "pcocc-image-import",
            "pcocc-image-repo-gc", "pcocc-help"} <= pages
    assert not any(name.startswith("pcocc-internal") for name in pages)


@pytest.mark.parametrize("path,cmd,ctx", _tree(), ids=lambda v: "-".join(v)
                         if isinstance(v, tuple) else "")
def test_page_lists_every_option_and_subcommand(path, cmd, ctx):
    page = _unroff(manpages.render(manpages.find_page(path[1:])))
    assert page.startswith(f'.TH "{"-".join(path).upper()}" "1"')
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Option) and not param.hidden:
            for opt in (*param.opts, *param.secondary_opts):
                assert opt in page, f"{opt} of {' '.join(path)} is missing from its page"
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                assert f"{'-'.join(path)}-{name}(1)" in page.replace("\\fB", "").replace(
                    "\\fR", "")


def test_roff_requests_in_help_text_are_neutralised():
    @click.command()
    @click.option("--x", help=".so /etc/shadow")
    def tool(x):
        """'br
        .sh rm -rf / \\ back"""

    page = manpages.render(manpages.find_page(["tool"], root=_group_with(tool)))
    lines = page.splitlines()
    assert not any(line.startswith((".so", ".sh", "'br")) for line in lines)
    assert "\\&.so /etc/shadow" in page and "\\e back" in page


def _group_with(cmd: click.Command) -> click.Group:
    group = click.Group("pcocc")
    group.add_command(cmd)
    return group


def test_help_without_man_prints_the_help_text(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no man there
    assert run_cli(["help", "alloc"]) == 0
    out = capsys.readouterr().out
    assert "Usage: pcocc alloc" in out and "--cores" in out


def test_help_of_an_unknown_command_is_a_usage_error(capsys):
    assert run_cli(["help", "image", "nope"]) == 2
    assert "'pcocc image' has no command 'nope'" in capsys.readouterr().err


def test_write_pages(tmp_path):
    written = manpages.write_pages(tmp_path)
    assert {p.name for p in written} == {f"{p.name}.1" for p in manpages.all_pages()}
    assert "\\-\\-cores" in (tmp_path / "pcocc-alloc.1").read_text()
