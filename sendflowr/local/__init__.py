"""Embedded single-machine components: the local Kafka broker and the chDB ClickHouse endpoint."""
