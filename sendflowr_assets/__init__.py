"""Dagster code location: thin adapters that wire the sendflowr core to assets, checks, jobs and sensors, by
domain under defs/."""
