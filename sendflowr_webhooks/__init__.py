"""ESP webhook receiver: a thin FastAPI adapter over sendflowr.connectors (docs/CONNECTORS.md)."""
