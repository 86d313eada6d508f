"""Timing: per-person engagement curves over the 168 UTC hours of the week, decisions and their evaluation.

decide.py (the decision rule, pure numpy) and store.py (reading committed curves from ClickHouse) are the
contract the API builds on; see docs/TIMING.md.
"""
