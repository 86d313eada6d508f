"""SendFlowr core: settings, ClickHouse and Kafka access, the event contract, timing and identity logic.

Imports neither Dagster nor FastAPI, so the API process never loads Dagster.
"""

__version__ = "0.1.0"
