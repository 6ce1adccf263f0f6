"""The ``odesde`` command: list, run, book, clean."""

from __future__ import annotations

import argparse
import sys
import time

from . import params
from .pipeline import CELL_TIMEOUT, PROFILES, PipelineError, Project


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odesde",
        description="Execute the companion's notebooks with a profile and build the book.",
    )
    parser.add_argument("--root", help="the book's folder (default: found from here upwards)")
    parser.add_argument("--build-dir", help="where outputs go (default: ROOT/_build)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="the notebooks and their parameters")

    run = commands.add_parser("run", help="validate, then execute notebooks with papermill")
    run.add_argument("--profile", choices=PROFILES, default="paper",
                     help="parameter profile (notebooks/profiles/PROFILE.yaml); default: paper")
    run.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                     help="override a parameter of the selected notebooks (value read as YAML)")
    run.add_argument("--force", action="store_true", help="ignore the cache")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed in parallel")
    run.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT, metavar="SECONDS",
                     help=f"stop a cell that runs longer (default {CELL_TIMEOUT:g})")
    run.add_argument("--keep-going", action="store_true",
                     help="after a failure, still run the remaining notebooks")

    commands.add_parser("book", help="assemble and build the book (execution off, -W -n)")
    commands.add_parser("clean", help="remove _build/")
    return parser


def _list(project: Project) -> None:
    for name, path in project.notebooks().items():
        print(name)
        for param in params.declared_parameters(path).values():
            doc = f"  {param.doc}" if param.doc else ""
            print(f"  {param.name} = {param.default!r}  ({param.allowed()}){doc}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        project = Project.at(args.root, build_dir=args.build_dir)
        if args.command == "list":
            _list(project)
        elif args.command == "run":
            from .pipeline import parse_assignments, run, summary_table

            start = time.perf_counter()
            results = run(
                project, args.profile, only=args.only,
                overrides=parse_assignments(args.parameter), force=args.force,
                jobs=args.jobs, keep_going=args.keep_going, cell_timeout=args.cell_timeout,
            )
            print(summary_table(results))
            print(f"wall time {time.perf_counter() - start:.1f} s")
            failed = [r for r in results if r.status != "ok"]
            for result in failed:
                print(f"error: notebook {result.name!r} {result.status}: {result.error}",
                      file=sys.stderr)
            return 1 if failed else 0
        elif args.command == "book":
            from .book import build

            index = build(project)
            print(f"book built: {index}")
        elif args.command == "clean":
            from .pipeline import clean

            clean(project)
    except (PipelineError, params.ParameterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
