"""`sendflowr campaign`: the demo's closed loop from decisions to measured uplift, against a synthetic world's ground
truth (loop.py, truth.py, cli.py; docs/EVALUATION.md)."""
