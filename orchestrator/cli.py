"""`hpo`: thin commands over the library. User errors print the problem and exit 2.

Exit codes: 0 success, 1 the run failed (results so far are kept), 2 invalid input.
"""

from __future__ import annotations

import argparse
import json
import sys

from orchestrator.errors import HpoError, RunError, SpecError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpo", description="Hyperparameter tuning on Ray Tune from one YAML spec.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a spec and print it resolved (defaults, family space, mode)")
    v.add_argument("spec")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec value")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a spec on an embedded local Ray and write Parquet results")
    r.add_argument("spec")
    r.add_argument("--output", help="run folder (default results/<name>/<run-id>/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec value")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.set_defaults(func=cmd_run)
    return p


def cmd_validate(args) -> int:
    from orchestrator.spec import load_spec
    import yaml

    exp = load_spec(args.spec, args.set)
    print(yaml.safe_dump(exp.resolved(), sort_keys=False), end="")
    print(f"# ok: {args.spec} is valid", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from orchestrator.runner import run
    from orchestrator.spec import load_spec

    exp = load_spec(args.spec, args.set)
    summary = run(exp, args.output, quiet=args.quiet)
    c = summary.counts
    print(f"run {summary.run_id}: {c['completed']} completed, {c['stopped']} stopped early, {c['errored']} errored")
    if summary.best:
        cfg = {k.removeprefix("config."): v for k, v in summary.best.items() if k.startswith("config.")}
        print(f"best trial {summary.best['trial_id']}: {exp.metric}={summary.best['score']:.6g} "
              f"at iteration {summary.best['score_iteration']}")
        print(f"  config: {json.dumps(cfg, default=str)}")
    print(f"results: {summary.run_dir}/ (trials.parquet, history.parquet, experiment.json)")
    if summary.best is None:
        print("no trial reported the metric; see the errors in trials.parquet", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(see `hpo {args.command} --help`)", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: run failed: {exc}", file=sys.stderr)
        return 1
    except HpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
