"""``python -m fasttx info | bench | profile | train``: one module per command, each adding its own subparser."""

import argparse

from . import bench, info, profile, train

COMMANDS = (info, bench, profile, train)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    args.func(args)
