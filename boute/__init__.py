"""The `boute` command line: the top layer, a thin shell over the library packages.

`boute.cli` builds the parser and runs a command (`main`); it holds `profile` (the perf-DB
build), `simulate` and `trace` itself and takes every other subcommand group from a module of
its own: `plan_cli` (plan, evaluate, compare), `profile_cli` (profile hardware|engine),
`serve_cli` (deploy, bench, node-resources; the load generator in `bench`), `keys_cli`,
`replan_cli`, `schedule_cli`, `slo_cli` and `reproduce_cli` (its report formatting in
`_reproduce_report`). The command modules share only
`boute._shared` (JSON-or-text output, the flags several commands take) and import nothing of
each other. Nothing imports this package (`tests/test_layers.py`); errors live in
`common.errors`.
"""
