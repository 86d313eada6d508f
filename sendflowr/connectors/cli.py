"""`sendflowr import --format F [--csv] FILE...`: exported ESP files into Kafka (docs/CONNECTORS.md).

Exit codes: 0 every row was produced (or skipped as a documented non-engagement event); 1 some rows were
rejected (every good row was still produced; see the rejects file); 2 the import could not run or Kafka
did not confirm (a rerun is safe: event ids are deterministic and ingestion deduplicates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sendflowr.settings import Settings


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import", help="import exported ESP event files into Kafka",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=("sendgrid", "mailgun", "ses", "klaviyo", "native"),
                        help="the provider whose format the files are in")
    parser.add_argument("--csv", action="store_true",
                        help="files are CSV with the provider's field names as headers (dots nest: a.b)")
    parser.add_argument("--rejects", type=Path, default=None,
                        help="where rejected rows go, as JSON lines (default <first FILE>.rejects.jsonl)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from sendflowr.connectors.common import ConnectorError
    from sendflowr.connectors.importer import import_files
    from sendflowr.errors import SendflowrError

    show = sys.stderr.isatty() if args.progress is None else args.progress
    with tqdm(unit=" rows", unit_scale=True, disable=not show, desc=f"import {args.format}") as bar:
        try:
            report = import_files(settings, args.format, args.files, args.csv, args.rejects, on_rows=bar.update)
        except ConnectorError as exc:
            raise SendflowrError(str(exc)) from None
    rate = report.rows / report.seconds if report.seconds else 0.0
    print(f"{report.rows} rows -> {report.events} events produced to {settings.kafka_topic} "
          f"({report.seconds:.1f}s, {rate:,.0f} rows/s); skipped {sum(report.skipped.values())}; "
          f"rejected {report.rejected_rows}")
    for name, count in sorted(report.skipped.items()):
        print(f"  skipped {count:>8}  {name}")
    for reason, count in report.rejected.most_common():
        print(f"  rejected {count:>7}  {reason}")
    for note, count in report.trimmed.most_common():
        print(f"  kept, {count:>7}  {note}")
    if report.rejects_path:
        print(f"rejected rows with line numbers: {report.rejects_path}")
    return 1 if report.rejected_rows else 0
