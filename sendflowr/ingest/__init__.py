"""Exactly-once ingestion of engagement events from Kafka into ClickHouse (docs/INGESTION.md)."""

from sendflowr.ingest.plan import OffsetRange
from sendflowr.ingest.run import IngestOptions, IngestReport, ingest_once

__all__ = ["IngestOptions", "IngestReport", "OffsetRange", "ingest_once"]
