"""`hpo`: thin commands over the library. User errors print the problem and exit 2.

Exit codes: 0 success, 1 the run failed (results so far are kept), 2 invalid input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from orchestrator.errors import HpoError
from orchestrator.run import summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpo", description="Hyperparameter tuning on Ray Tune from one YAML spec.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a spec and print it resolved (defaults, family space, mode)")
    spec_args(v)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a spec on an embedded local Ray and write Parquet results")
    spec_args(r)
    r.add_argument("--output", help="run folder (default results/<name>/<run-id>/)")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.add_argument("--ray", metavar="ADDRESS", help="join a running Ray instead of starting one ('auto': the one "
                                                      "`ray start --head` started here); saves Ray's start-up")
    r.add_argument("--dashboard", action="store_true", help="write a live Optuna journal for `hpo dashboard RUN_DIR` "
                                                            "(as `dashboard: true` in the spec)")
    r.set_defaults(func=cmd_run)
    rs = sub.add_parser("resume", help="finish a stopped or killed run in its own folder (to budget.trials); "
                                       "--set budget.trials=N extends one, a finished one too")
    rs.add_argument("run_dir", metavar="RUN_DIR")
    rs.add_argument("--set", action="append", default=[], metavar="budget.trials=N",
                    help="a new budget: budget.trials, time_s, cpu_hours, gpu_hours or stop (nothing else may change)")
    rs.add_argument("--quiet", action="store_true", help="no progress line")
    rs.add_argument("--ray", metavar="ADDRESS", help="join a running Ray instead of starting one")
    rs.set_defaults(func=cmd_resume)
    _model_commands(sub)
    _cluster_commands(sub)
    _analysis_commands(sub)
    _dashboard_command(sub)
    return p


def spec_args(p: argparse.ArgumentParser) -> None:
    """The spec file and its `--set` overrides, the same for every command that takes a spec."""
    p.add_argument("spec")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec value")


def cmd_validate(args) -> int:
    import yaml

    from orchestrator.spec.load import load_spec

    exp = load_spec(args.spec, args.set)
    print(yaml.safe_dump(exp.resolved(), sort_keys=False), end="")
    print(f"# ok: {args.spec} is valid", file=sys.stderr)
    return 0


def cmd_resume(args) -> int:
    from orchestrator.run.resume import resume

    return summary.report(resume(args.run_dir, quiet=args.quiet, ray_address=args.ray, overrides=args.set))


def cmd_run(args) -> int:
    from orchestrator.run.driver import run
    from orchestrator.spec.load import load_spec

    exp = load_spec(args.spec, args.set + (["dashboard=true"] if args.dashboard else []))
    if exp.spec.dashboard and not args.quiet:
        where = args.output or f"results/{exp.spec.name}/<run id>"
        print(f"live Optuna journal on: hpo dashboard {where}", file=sys.stderr)
    return summary.report(run(exp, args.output, quiet=args.quiet, ray_address=args.ray))  # else RunError


# --- the saved model: thin wrappers over orchestrator.model.predict and orchestrator.run.take_home -----

def _model_commands(sub) -> None:
    p = sub.add_parser("predict", help="predict a .csv/.parquet table with a run's saved model")
    p.add_argument("model", metavar="RUN_DIR", help="run folder (its model/) or a model folder (models/<trial id>)")
    p.add_argument("data", metavar="DATA", help=".csv or .parquet with the model's columns (its target column too "
                                                "to score the predictions)")
    p.add_argument("--output", required=True, metavar="PRED", help=".parquet or .csv to write (index kept)")
    p.add_argument("--force", action="store_true", help="replace PRED if it exists")
    p.add_argument("--trust", action="append", default=[], metavar="TYPE",
                   help="a type a scikit-learn model file may build beyond scikit-learn's own (skops)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a joblib model file, which runs any code it holds: only files you made")
    p.set_defaults(func=cmd_predict)
    r = sub.add_parser("refit", help="refit a trial's config on train+valid, score it on test, save its model")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--trial", required=True, metavar="ID", help="the trial (trials.parquet trial_id), e.g. a "
                                                                "point of the Pareto front")
    r.add_argument("--force", action="store_true", help="replace RUN_DIR/models/ID if it was saved before")
    r.set_defaults(func=cmd_refit)


def cmd_predict(args) -> int:
    from orchestrator.model.predict import predict_file

    done = predict_file(args.model, args.data, args.output, force=args.force, trusted=tuple(args.trust),
                        trust_pickle=args.trust_pickle)
    cols = done.columns if len(done.columns) <= 4 else [*done.columns[:3], "...", done.columns[-1]]
    print(f"wrote {done.rows} predictions to {done.output} (columns: {', '.join(cols)})")
    if done.scores is not None:
        card = done.model.card
        name = card.test_metric
        ours = f"{name}={done.scores[name]:.6g}" if name in done.scores else \
            ", ".join(f"{k}={v:.4g}" for k, v in done.scores.items())
        ref = f"; the run's test split: {name}={card.test_score:.6g}" if card.test_score is not None else ""
        print(f"{ours} on {args.data} (target column {card.target!r}){ref}")
    return 0


def cmd_refit(args) -> int:
    from orchestrator.run.take_home import refit_trial

    folder, card = refit_trial(args.run_dir, args.trial, force=args.force)
    how = card["training"]["method"]
    score = f"{card['test_metric']}={card['test_score']:.6g}" if card.get("test_score") is not None else "no test score"
    print(f"trial {args.trial} refitted on train+valid ({how}): {score}\n"
          f"model: {folder}/ ({card['format']})\n"
          f"next: hpo predict {folder} DATA.csv --output predictions.parquet")
    return 0


# --- clusters: thin wrappers over orchestrator.cluster.spec / localcluster / jobs -------------------

def _cluster_commands(sub) -> None:
    import os

    default = os.environ.get("HPO_CLUSTER", "cluster/local.yaml")

    def cluster_arg(p):
        p.add_argument("--cluster", default=default, metavar="FILE",
                       help=f"cluster file (default $HPO_CLUSTER or cluster/local.yaml; now {default})")

    s = sub.add_parser("submit", help="submit a spec to a Ray cluster through the Jobs API; prints the job id")
    spec_args(s)
    cluster_arg(s)
    s.add_argument("--working-dir", help="folder uploaded with the job; must hold the spec (default: here)")
    s.set_defaults(func=cmd_submit)
    for name, func, helptext in (("status", cmd_status, "a job's status and where its results go"),
                                 ("logs", cmd_logs, "a job's output (--follow: until it ends)"),
                                 ("stop", cmd_stop, "stop a job; results so far are kept"),
                                 ("fetch", cmd_fetch, "copy a job's Parquet results here")):
        j = sub.add_parser(name, help=helptext)
        j.add_argument("job")
        cluster_arg(j)
        if name == "logs":
            j.add_argument("--follow", "-f", action="store_true",
                           help="stream until the job ends; exit 0 if it succeeded")
        if name == "fetch":
            j.add_argument("--output", help="folder (default results/<name>/<job id>/)")
        j.set_defaults(func=func)

    c = sub.add_parser("cluster", help="validate a cluster file; start/stop a local cluster")
    csub = c.add_subparsers(dest="action", required=True)
    for action, helptext in (("up", "start the local cluster's nodes with `ray start`"),
                             ("down", "stop the nodes `hpo cluster up` started (only those)"),
                             ("validate", "check a cluster file with Ray's own schema"),
                             ("token", "create the cluster's token file (mode 0600) if missing; never prints it")):
        a = csub.add_parser(action, help=helptext)
        a.add_argument("file", metavar="CLUSTER_FILE")
        a.set_defaults(func=cmd_cluster)


def cmd_submit(args) -> int:
    from orchestrator.cluster import jobs
    from orchestrator.cluster import spec as cluster

    c = cluster.load(args.cluster)
    _quiet_ray_logs()  # Ray logs each package it uploads and each file it leaves out
    sub = jobs.submit(c, args.spec, args.set, args.working_dir, log=lambda m: print(m, file=sys.stderr))
    print(sub.job_id)  # alone on stdout: JOB=$(hpo submit ...)
    total = sub.capacity.total
    fits = "an unknown number of" if total is None else f"at most {total}"
    flag = f"--cluster {args.cluster}"
    where = ", ".join(f"{k}: {'?' if v is None else v}" for k, v in sub.capacity.per_type.items())
    print(f"submitted to {c.name} ({c.hpo.jobs_address}); {fits} trials fit at once ({where})\n"
          f"results: {sub.results}\n"
          f"next: hpo logs {sub.job_id} {flag} --follow\n"
          f"      hpo status {sub.job_id} {flag}\n"
          f"      hpo fetch {sub.job_id} {flag}", file=sys.stderr)
    return 0


def _quiet_ray_logs() -> None:
    """This process logs nothing itself; Ray's client-side INFO/WARNING lines are noise here."""
    import logging

    logging.disable(logging.WARNING)


def cmd_status(args) -> int:
    from orchestrator.cluster import jobs
    from orchestrator.cluster import spec as cluster

    details = jobs.info(cluster.load(args.cluster), args.job)
    print("\n".join(jobs.describe(details)))
    return 0


def cmd_logs(args) -> int:
    from orchestrator.cluster import jobs
    from orchestrator.cluster import spec as cluster

    c = cluster.load(args.cluster)
    _quiet_ray_logs()
    if not args.follow:
        print(jobs.logs(c, args.job), end="")
        return 0
    status = jobs.follow(c, args.job)
    print(f"# job {args.job}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_stop(args) -> int:
    from orchestrator.cluster import jobs
    from orchestrator.cluster import spec as cluster

    status = jobs.stop(cluster.load(args.cluster), args.job)
    print(f"{args.job}: {status}")
    return 0


def cmd_fetch(args) -> int:
    from orchestrator.cluster import jobs
    from orchestrator.cluster import spec as cluster

    c = cluster.load(args.cluster)
    dest = jobs.fetch(c, args.job, args.output)
    status = jobs.info(c, args.job).status
    print(f"{dest}/ (job {status}{'' if status == 'SUCCEEDED' else ': results so far'})")
    return 0


def cmd_cluster(args) -> int:
    from orchestrator.cluster import auth
    from orchestrator.cluster import local as localcluster
    from orchestrator.cluster import spec as cluster

    c = cluster.load(args.file)
    if args.action == "validate":
        kinds = ", ".join(t.describe() for t in c.node_types.values())
        print(f"ok: {args.file} is a valid {c.kind} cluster file ({c.name}: {kinds})")
    elif args.action == "token":
        path = c.hpo.auth.path()
        if path is None:
            raise cluster.ClusterError(f"{args.file} reads its token from ${c.hpo.auth.token_env}, not a file")
        print(f"token file: {auth.ensure_private_token(path)} (mode 0600)")
    elif args.action == "up":
        if (state := localcluster.running(c)) and not localcluster.dead_nodes(state):
            print(f"cluster {c.name} is already up (Jobs API {state.jobs_address}); stop it with "
                  f"`hpo cluster down {args.file}`")
            return 0
        state = localcluster.up(c)  # restarts dead workers of a running cluster
        nodes = ", ".join(n.node_type for n in state.nodes)
        print(f"cluster {c.name} up in {state.started_s:.1f}s: {nodes}\n"
              f"Jobs API {state.jobs_address} (token in {c.hpo.auth.path()}); GCS {state.gcs_address}\n"
              f"logs: {c.temp_dir}/<node>/session_latest/logs, {c.state_dir}\n"
              f"next: hpo submit SPEC --cluster {args.file}")
    else:
        state = localcluster.down(c)
        print(f"cluster {c.name}: " + ("stopped " + ", ".join(f"{n.node_type} (pid {n.pid})" for n in state.nodes)
                                       if state else "not running (no state in " + str(c.state_dir) + ")"))
    return 0


# --- analysis: thin wrappers over orchestrator.analysis.runs / anytime / importance / optuna_study -----

def _analysis_commands(sub) -> None:
    # No `choices=` from the analysis registries: importing them (pandas) would slow every command;
    # the library refuses an unknown name with the valid ones.
    r = sub.add_parser("results", help="a run's summary and its best trials")
    r.add_argument("run", nargs="+", metavar="RUN", help="run folder (or a folder of runs)")
    r.add_argument("--top", type=int, default=5, metavar="K", help="best trials to list per run (default 5)")
    r.set_defaults(func=cmd_results)

    c = sub.add_parser("compare", help="setups (searcher/scheduler) over seeds on equal budget, best first")
    c.add_argument("run", nargs="+", metavar="RUN", help="run folders (or folders of runs) of one experiment")
    c.add_argument("--optimum", type=float, help="the metric's known optimum, for regret (known for family synthetic)")
    c.add_argument("--x", default="elapsed_s", help="axis the mean rank over time is taken on: elapsed_s (default), "
                                                   "or a compute axis of orchestrator.analysis.anytime.AXES")
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("importance", help="hyperparameter importance of a run (Optuna's evaluators)")
    i.add_argument("run", metavar="RUN")
    i.add_argument("--evaluator", default="fanova", help="fanova (default) or another of "
                                                         "orchestrator.analysis.importance.EVALUATORS")
    i.add_argument("--seed", type=int, default=0, help="seeds fANOVA's forest (PED-ANOVA has no randomness)")
    i.set_defaults(func=cmd_importance)

    e = sub.add_parser("export", help="write a run in another tool's format")
    formats = e.add_subparsers(dest="format", required=True)
    o = formats.add_parser("optuna", help="an Optuna journal file, which `optuna-dashboard FILE` opens")
    o.add_argument("run", metavar="RUN")
    o.add_argument("--storage", required=True, metavar="FILE", help="journal file to write (appended if it exists)")
    o.add_argument("--study-name", help="default <name>/<run id>")
    o.set_defaults(func=cmd_export_optuna)


def cmd_results(args) -> int:
    from orchestrator.analysis.runs import best_trials, describe, load_runs
    from orchestrator.analysis.usage import usage

    runs = load_runs(args.run)
    top = best_trials(runs, args.top).rename(columns=lambda col: col.removeprefix("config."))
    spent = usage(runs).set_index("run")
    for run in runs.runs["run"]:
        print("\n".join(describe(runs.select(run))))
        if run in spent.index:  # what budget.cpu_hours/gpu_hours count (orchestrator.run.stopping)
            print(f"  {spent.at[run, 'cpu_s'] / 3600:.4f} CPU-hours, {spent.at[run, 'gpu_hours']:.4f} GPU-hours "
                  f"(granted per trial x its wall time)")
        print(top[top["run"] == run].drop(columns="run").dropna(axis=1, how="all").to_string(index=False))
    return 0


def cmd_compare(args) -> int:
    from orchestrator.analysis.anytime import budget_notes, compare, known_optimum
    from orchestrator.analysis.runs import load_runs

    runs = load_runs(args.run)
    optimum = args.optimum if args.optimum is not None else known_optimum(runs)
    for note in budget_notes(runs):
        print(f"note: {note}", file=sys.stderr)
    table = compare(runs, optimum, args.x)
    print(f"{runs.metric} ({runs.mode}) over {len(runs)} runs"
          + (f"; regret against the optimum {optimum:g}" if optimum is not None else ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_importance(args) -> int:
    from orchestrator.analysis.importance import importance

    print("\n".join(importance(args.run, args.evaluator, args.seed).describe()))
    return 0


def cmd_export_optuna(args) -> int:
    from orchestrator.analysis.optuna_study import export_journal

    study = export_journal(args.run, args.storage, args.study_name)
    skipped = study.user_attrs.get("hpo_skipped_trials") or []
    print(f"study {study.study_name!r}: {len(study.trials)} trials written to {args.storage}"
          + (f" ({len(skipped)} outside the spec's space left out)" if skipped else ""))
    print(f"next: optuna-dashboard {args.storage}   (pip install optuna-dashboard, or .[dashboard])")
    return 0


# --- the dashboard: a thin wrapper over orchestrator.analysis.dashboard ------------------------------

def _dashboard_command(sub) -> None:
    import os

    d = sub.add_parser("dashboard", help="optuna-dashboard on a run's live Optuna journal (or a snapshot exported "
                                         "from its results), during the run or after it")
    d.add_argument("run", metavar="RUN_DIR|JOB", help="a run folder, or a cluster job's id (with --cluster)")
    d.add_argument("--port", type=int, help="default: the first free port from 8080")
    d.add_argument("--host", help="default 127.0.0.1 (this machine only); another address serves the dashboard, "
                                  "which has no authentication, to whoever can reach it")
    d.add_argument("--cluster", metavar="FILE", help="RUN is a job on this cluster: follow its results on the shared "
                                                     "storage (default for a job: $HPO_CLUSTER or cluster/local.yaml)")
    d.set_defaults(func=cmd_dashboard, default_cluster=os.environ.get("HPO_CLUSTER", "cluster/local.yaml"))


def cmd_dashboard(args) -> int:
    import re
    import signal
    import threading
    from pathlib import Path

    from orchestrator.analysis import dashboard
    from orchestrator.errors import ResultsError

    run_dir = Path(args.run)
    job_id = re.fullmatch(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{4}-[0-9a-f]{8}", args.run)  # rundir.new_run_id's shape
    if args.cluster or (job_id and not run_dir.exists()):
        from orchestrator.cluster import jobs
        from orchestrator.cluster import spec as cluster

        file = args.cluster or args.default_cluster
        _quiet_ray_logs()
        details = jobs.info(cluster.load(file), args.run)
        run_dir = dashboard.job_run_dir((details.metadata or {}).get(jobs.META_RESULTS), args.run,
                                        str(details.status), f"--cluster {file}")
    elif not run_dir.exists():
        raise ResultsError(f"no run folder at {run_dir}; give a run folder (results/<name>/<run id>), or a cluster "
                           f"job id with --cluster FILE")
    journal = dashboard.journal_of(run_dir)
    try:
        server, url = dashboard.open_server(journal, args.host, args.port)
        # SIGTERM stops it as Ctrl-C does, so an exported snapshot's folder is removed either way.
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
        # And Ctrl-C does whatever the parent left: a shell starts a background command (`&` in a
        # script) with SIGINT ignored, and Python then never raises KeyboardInterrupt; `kill -INT`
        # did nothing (`hpo run` installs its own handler too: orchestrator.run.signals). Both are
        # set before the URL is printed: whoever reads it can stop the server.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            what = (f"live journal {journal.path}" if journal.live else
                    f"a snapshot exported from {run_dir}'s results: it has no live journal (run with --dashboard, "
                    f"or `dashboard: true`, to follow one as it runs)")
            print(f"study {journal.study_name!r}, {journal.trials} trials so far; {what}", file=sys.stderr)
            if args.host and not dashboard.is_loopback(args.host):
                print(f"warning: serving on {args.host}, not this machine alone: optuna-dashboard has no "
                      f"authentication, and anyone who can reach it can read the study and change it (notes, "
                      f"deleting it)", file=sys.stderr)
            print(url, flush=True)  # alone on stdout
            print("Ctrl-C stops it", file=sys.stderr, flush=True)
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        journal.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (HpoError, KeyboardInterrupt, OSError) as exc:
        return summary.report_failure(exc, help_hint=f"hpo {args.command} --help")


def entry() -> None:
    """The `hpo` program: `main`, then an exit that skips the interpreter's teardown, which the
    results do not need.

    When `main` returns the run folder is complete, and a local Ray the run started is shut down
    (its processes gone; a joined one disconnected): orchestrator.run.ray_local.connected. Tearing
    down the modules a run imported (Ray, Tune, pandas, the families' libraries) then takes another
    ~0.6-0.9 s (docs/performance.md). So our streams and logging handlers are flushed and the process
    exits. `main()` itself, which tests and notebooks call, returns as usual.

    Only after success (exit 0): a run that failed or was interrupted may have left its trackers
    open (an MLflow run, a W&B run) or Ray shutting down on a thread when a second Ctrl-C came,
    and the atexit hooks of Ray, MLflow and W&B finish those, so the interpreter exits as usual.

    Not skipped: Ray's own shutdown. Leaving a local Ray to die with the process (Ray gives its
    processes the kernel's parent-death signal) left Ray's dashboard and runtime-env agents, which
    the raylet starts, running after the exit."""
    code = main()
    if code:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`hpo results | head`): nothing more to say
            pass
    os._exit(0)


if __name__ == "__main__":
    entry()
