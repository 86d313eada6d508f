"""The `sendflowr` console command. Each subcommand lives beside the code it drives and registers itself."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from sendflowr.settings import get_settings

# Modules that contribute subcommands; each exposes add_cli(subparsers).
_COMMAND_MODULES = (
    "sendflowr.local.kafka_broker",
    "sendflowr.local.chdb_server",
    "sendflowr.migrations",
    "sendflowr.synth.cli",
    "sendflowr.local.stack",
    "sendflowr.connectors.cli",
    "sendflowr.campaign.cli",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="sendflowr", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:  # a bad SENDFLOWR_* value: name it, no traceback
        problems = "; ".join(f"SENDFLOWR_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"sendflowr: invalid configuration: {problems}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a user-facing command: say what failed, not a bare stack trace
        from sendflowr.errors import SendflowrError

        if isinstance(exc, SendflowrError):
            print(f"sendflowr {args.command}: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
