"""The base layer: errors, environment helpers and small parsers every part may import.

It imports nothing of BOute. Above it: profiling <- tuning <- placement <- app <- the CLI
(`boute`), each importing only what lies below it (`tests/test_layers.py` checks this).
"""
