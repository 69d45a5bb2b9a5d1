"""The `hyperflow` command: one subcommand per job, each in its own module under jobs/."""

from __future__ import annotations

import argparse
import importlib
import sys

from hyperflow.errors import UserError

# subcommand -> (module under jobs/, one-line help)
COMMANDS = {
    "data": ("data_info", "inspect a dataset spec: domains, classes, a PNG contact sheet"),
    "pretrain": ("pretrain", "train the target backbone on the base domains"),
    "collect": ("collect.command", "simulate bias-tuning trajectories on Ray into a sharded store"),
    "inspect": ("inspect_store", "summarise and verify a trajectory store"),
    "average": ("average", "a store of one record per episode: the mean of its inits' runs"),
    "train": (
        "train.command",
        "train a drift network from a store (Accelerate; --nproc for ranks)",
    ),
    "evaluate": ("evaluate", "evaluate direct, gradient and HyperFlow adaptation per domain"),
    "pipeline": ("pipeline", "pretrain, collect, train and evaluate end to end"),
    "sweep": ("sweep", "the scaling curve: drift sizes x trajectory counts, docs table + PNG"),
    "bench": ("bench.command", "benchmarks printing JSON"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with `only`, just that subcommand's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="hyperflow",
        description="HyperFlow: gradient-free emulation of few-shot bias fine-tuning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if only is None or name == only:
            mod = importlib.import_module(f"jobs.{module}")
            p.description = (mod.__doc__ or help_text).strip()
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=chosen if chosen in COMMANDS else "").parse_args(argv)
    args.argv = list(argv)  # the command line, for commands that re-run themselves (jobs.launch)
    try:
        args._run(args)
    except UserError as e:
        print(f"hyperflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
