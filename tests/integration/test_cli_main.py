import subprocess
import sys

from click.testing import CliRunner

import pcocc
from pcocc.cli.app import cli
from pcocc.cli.commands import COMMANDS, HIDDEN
from pcocc.cli.main import run_cli


def test_help_lists_every_public_group():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for name, (_, help_) in COMMANDS.items():
        if name in HIDDEN:
            assert f"  {name} " not in res.output
        else:
            # click wraps a long help line: compare with the whitespace made one space
            assert name in res.output and help_ in " ".join(res.output.split())


def test_unknown_command_is_usage_error(capsys):
    assert run_cli(["no-such-command"]) == 2
    assert "No such command 'no-such-command'" in capsys.readouterr().err


def test_version_through_real_process(pcocc_bin):
    out = subprocess.run([pcocc_bin, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pcocc, version ")


def test_help_does_not_import_command_modules(pcocc_bin):
    code = (
        "import sys; from pcocc.cli.main import run_cli; run_cli(['--help']);"
        "print(sorted(m for m in sys.modules if m.startswith('pcocc.cli.') and m not in"
        " ('pcocc.cli.main', 'pcocc.cli.app', 'pcocc.cli.commands', 'pcocc.cli.context',"
        " 'pcocc.cli.session', 'pcocc.cli.fastrun')))"
    )
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version_answers_without_click(pcocc_bin):
    code = (
        "import sys\nfrom pcocc.cli.main import main\ntry:\n    main(['--version'])\n"
        "except SystemExit as e:\n    print(e.code, 'click' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["pcocc, version " + pcocc.__version__, "0 False"]
    # The same line as click's own version option, which still handles e.g. '-v --version'.
    assert run_cli(["--version"]) == 0
