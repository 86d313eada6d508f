"""The SQL the pipeline runs (migrations/, ingest/, identity/, timing/, decisions/), shipped inside the
installed package as `sendflowr._sql` (setup.py maps it here); read it through sendflowr.sql_files."""
