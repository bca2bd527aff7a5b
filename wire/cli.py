"""The command lines' own parser, the device's and the district's: a mistyped argument is
one line, like every other bad input, naming the argument and where the help is."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (exit 2) instead of the usage block and
    the error: the line argparse would end with, and the command that shows the usage.
    Sub-commands made with `add_subparsers().add_parser` are of this class too."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)
