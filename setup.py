"""Packaging: the metadata is in setup.cfg; this file adds one build step.

``build_man`` writes the manual pages (one per command and group, from the click
definitions: ``pcocc/cli/manpages.py``) into ``<build>/man/man1`` and installs them as data
files in ``<prefix>/share/man/man1``, where ``man`` finds them next to ``<prefix>/bin``.
It runs with every build (wheel, editable install, ``setup.py build``), so the installed
pages are those of the code being installed.
"""

import os
import sys

from setuptools import Command, setup
from setuptools.command.build import build


class build_man(Command):
    description = "write the man pages of pcocc from its click commands"
    user_options: list = []

    def initialize_options(self):
        self.build_base = None

    def finalize_options(self):
        self.set_undefined_options("build", ("build_base", "build_base"))

    def run(self):
        out = os.path.abspath(os.path.join(self.build_base, "man", "man1"))
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            from pcocc.cli.manpages import write_pages
        finally:
            sys.path.pop(0)
        from pathlib import Path

        pages = [os.fspath(p) for p in write_pages(Path(out))]
        # install_data reads this list when it runs, after the build.
        self.distribution.data_files.append(("share/man/man1", pages))


build.sub_commands.append(("build_man", None))

setup(cmdclass={"build_man": build_man}, data_files=[])
