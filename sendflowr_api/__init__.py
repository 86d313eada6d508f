"""FastAPI service that reads SendFlowr's materialized results. Never imports Dagster."""
