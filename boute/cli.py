"""The `boute` command line: a thin layer over the library, one function pair per command.

Every command takes `--json`: it then prints exactly one JSON object on stdout (progress bars
go to stderr). Errors in the user's input print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.errors import BouteError

__all__ = ["main"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="boute", description="BOute: cost-efficient LLM "
                                     "serving on heterogeneous models and GPUs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True)
    from boute.calibrate_cli import add_calibrate
    from boute.compare_cli import add_compare
    from boute.evaluate_cli import add_evaluate
    from boute.keys_cli import add_keys
    from boute.plan_cli import add_plan
    from boute.profile_cli import add_profile
    from boute.replan_cli import add_replan
    from boute.reproduce_cli import add_reproduce
    from boute.schedule_cli import add_schedule
    from boute.serve_cli import add_bench, add_deploy, add_node_resources
    from boute.simulate_cli import add_simulate
    from boute.slo_cli import add_slo
    from boute.trace_cli import add_trace

    for add in (add_profile, add_simulate, add_trace, add_plan, add_evaluate, add_compare,
                add_deploy, add_bench, add_node_resources, add_replan, add_keys,
                add_reproduce, add_slo, add_schedule, add_calibrate):
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON object on stdout")
    return parser


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a cause quoted inside it may span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `boute` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except BouteError as exc:
        print(f"boute {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"boute {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
