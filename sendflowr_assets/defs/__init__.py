"""The code location by domain, as dagster-open-platform lays it out: each folder holds its assets, checks, jobs and
sensors, and a definitions.py that sendflowr_assets/definitions.py merges."""
