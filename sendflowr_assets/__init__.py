"""Dagster code location: thin adapters that wire the sendflowr core to assets, checks and schedules."""
