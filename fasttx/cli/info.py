"""``python -m fasttx info``: versions, GPU, which backends are available and why not, as JSON."""

import json


def run(_args):
    from .. import info

    print(json.dumps(info(), indent=2, default=str))


def add_parser(commands):
    commands.add_parser("info", help="versions, GPU, available backends").set_defaults(func=run)
