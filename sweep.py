"""Optuna searches and ablation grids that call train() directly.

    python sweep.py                                          # configs/sweep.yaml: TPE search with pruning
    python sweep.py --config configs/ablations/dropout.yaml  # one ablation axis x seeds, as a grid
    python sweep.py --trials 8 --workers 2 train.epochs=5    # more trials, two processes, overrides

Every trial is a normal run under {out_dir}/sweeps/<study>/ (checkpoints, TensorBoard, hparams).
Rerunning the same command resumes the study; a finished grid runs nothing again. Results land in
{out_dir}/sweeps/<study>/results.md and best.yaml (a complete config that train.py re-runs).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from compare import read_run
from config import (build, deep_merge, load_config, nest, parse_command_line, parse_overrides, read_yaml_chain,
                    save_config)
from data import load_split
from runtime import ConfigError, UserError, cli, make_dir, mix_seed, process_alive, write_text

SAMPLERS = ("tpe", "random", "grid")
# A grid axis whose values are whole sets of changes ({dotted key: value}, {} = the base): one row per
# value, so a grid can hold one-change-per-row comparisons instead of a Cartesian product.
VARIANT = "variant"
PRUNERS = ("median", "hyperband", "none")


@dataclass
class SweepConfig:
    base: str = "cifar10_best.yaml"  # experiment config every trial starts from (relative to the sweep file)
    overrides: dict = field(default_factory=dict)  # dotted keys applied to every trial
    space: dict = field(default_factory=dict)  # dotted key -> {type: float|int|choice, low, high, log, step, choices}
    grid: dict = field(default_factory=dict)  # dotted key (or section) -> list of values; `seed` gives repeats
    sampler: str = "tpe"  # tpe | random | grid (grid is implied by `grid:`)
    pruner: str = "median"  # median | hyperband | none
    # Pruner warm-up: epoch 1 of a short run is mostly noise, so no trial is pruned before it has validated
    # `prune_from_epoch` epochs, and (median) none before `prune_after_trials` trials have finished.
    prune_from_epoch: int = 2
    prune_after_trials: int = 3
    trials: int = 20  # trials per invocation for searches (a grid runs its missing points)
    timeout: float = 0.0  # seconds per invocation; 0 = no limit
    storage: str = ""  # Optuna storage URL; "" = sqlite:///{out_dir}/optuna.db; journal:PATH for a journal file
    study: str = ""  # study name; "" = the sweep file's name


# ---------------------------------------------------------------------------------------------
# Sweep files

def load_sweep(path: str) -> tuple[SweepConfig, str]:
    """Parse and validate a sweep file; returns it and the base config's absolute path."""
    raw = read_yaml_chain(path)
    try:
        sw = build(SweepConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    base = os.path.join(os.path.dirname(os.path.abspath(path)), sw.base)
    if not sw.study:
        sw.study = os.path.splitext(os.path.basename(path))[0]
    if sw.grid:
        if sw.space:
            raise ConfigError(f"{path}: use either `space:` (a search) or `grid:` (a grid), not both")
        sw.sampler = "grid"
    if sw.sampler not in SAMPLERS:
        raise ConfigError(f"{path}: sampler `{sw.sampler}` is not one of {', '.join(SAMPLERS)}")
    if sw.pruner not in PRUNERS:
        raise ConfigError(f"{path}: pruner `{sw.pruner}` is not one of {', '.join(PRUNERS)}")
    if sw.prune_from_epoch < 1 or sw.prune_after_trials < 0:
        raise ConfigError(f"{path}: prune_from_epoch must be >= 1 and prune_after_trials >= 0 "
                          f"(got {sw.prune_from_epoch} and {sw.prune_after_trials})")
    if sw.sampler == "grid" and not sw.grid:
        raise ConfigError(f"{path}: sampler grid needs a `grid:` mapping of keys to value lists")
    if sw.sampler != "grid" and not sw.space:
        raise ConfigError(f"{path}: a search needs a `space:` mapping of dotted keys to distributions")
    for key, values in sw.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid `{key}` needs a non-empty list of values")
        if key == VARIANT and not all(isinstance(v, dict) for v in values):
            raise ConfigError(f"{path}: every grid `{VARIANT}` value is a mapping of dotted keys to values "
                              "({} for the base)")
    for key, spec in sw.space.items():
        check_distribution(path, key, spec)
    return sw, base


def check_distribution(path: str, key: str, spec: Any) -> None:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "choice":
        if not spec.get("choices"):
            raise ConfigError(f"{path}: space `{key}` (choice) needs a non-empty `choices` list")
    elif kind in ("float", "int"):
        ends = [spec.get(end) for end in ("low", "high")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ends) or not ends[0] < ends[1]:
            raise ConfigError(f"{path}: space `{key}` ({kind}) needs numbers low < high, got low={ends[0]!r}, "
                              f"high={ends[1]!r}")
        step = spec.get("step")
        if step is not None and not (isinstance(step, (int, float)) and step > 0):
            raise ConfigError(f"{path}: space `{key}`: step must be a number > 0, got {step!r}")
        if spec.get("log") and float(spec["low"]) <= 0:
            raise ConfigError(f"{path}: space `{key}` is log-scaled, so low must be > 0")
    else:
        raise ConfigError(f"{path}: space `{key}` needs `type: float|int|choice`, got {spec!r}")


def trial_config(base: str, sw: SweepConfig, cli: list[str], values: dict, run_dir: str = ""):
    """base <- sweep overrides <- CLI overrides <- this trial's values, validated like train configs."""
    raw = read_yaml_chain(base)
    for k, v in sw.overrides.items():
        raw = deep_merge(raw, nest(k, v))
    raw = deep_merge(raw, parse_overrides(cli))
    for k, v in values.items():
        for dk, dv in (v.items() if k == VARIANT else [(k, v)]):
            raw = deep_merge(raw, nest(dk, dv))
    if run_dir:
        raw = deep_merge(raw, {"run_dir": run_dir})
    return load_config(base=raw)


def grid_space(sw: SweepConfig) -> dict:
    """Grid values as Optuna-storable primitives (mappings and lists become JSON strings)."""
    enc = lambda v: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)  # noqa: E731
    return {k: [enc(v) for v in vs] for k, vs in sw.grid.items()}


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def validate_space(base: str, sw: SweepConfig, cli: list[str]) -> None:
    """Build one config per grid value / distribution end so bad keys fail before any trial."""
    samples = [{k: decode(v)} for k, vs in grid_space(sw).items() for v in vs]
    for key, spec in sw.space.items():
        samples += [{key: v} for v in (spec["choices"] if spec["type"] == "choice" else (spec["low"], spec["high"]))]
    for values in samples or [{}]:
        try:
            trial_config(base, sw, cli, values)
        except ConfigError as e:
            raise ConfigError(f"sweep value {values}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Optuna plumbing

def make_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

        path = url[len("journal:"):]
        make_dir(os.path.dirname(os.path.abspath(path)))
        # A process killed while appending leaves the lock behind; Optuna breaks it after the grace period.
        # Appends take milliseconds, so 5 s (not the default 30) is still far longer than a real hold.
        lock = JournalFileSymlinkLock(path, grace_period=5)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=lock))
    if url.startswith("sqlite:///"):
        make_dir(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])) or ".")
    return url


def make_study(sw: SweepConfig, storage_url: str, seed: int):
    import optuna

    # A grid's trials all come from its queue (queue_missing_points), so its sampler only has to exist:
    # Optuna's GridSampler keys points by a seeded shuffle, which differs between seeds, workers and runs.
    if sw.sampler in ("grid", "random"):
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    # Optuna's epoch steps are train.py's 1-based epochs: `step < n_warmup_steps` is never pruned.
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=sw.prune_after_trials,
                                                            n_warmup_steps=sw.prune_from_epoch),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=sw.prune_from_epoch),
              "none": lambda: optuna.pruners.NopPruner()}[sw.pruner]()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # main() says what it opened, in one line
    try:
        return optuna.create_study(study_name=sw.study, storage=make_storage(storage_url), sampler=sampler,
                                   pruner=pruner, direction="maximize", load_if_exists=True)
    except UserError:
        raise
    except Exception as e:  # SQLAlchemy / driver errors: a malformed, unknown or unreachable URL
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"storage {storage_url} cannot be opened ({reason}); use sqlite:///PATH, journal:PATH "
                          "or a reachable database URL") from None
    finally:
        optuna.logging.set_verbosity(verbosity)


def suggest(trial, sw: SweepConfig) -> dict:
    values = {}
    for key, vs in grid_space(sw).items():
        values[key] = decode(trial.suggest_categorical(key, vs))
    for key, spec in sw.space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_categorical(key, spec["choices"])
    return values


def objective_for(base: str, sw: SweepConfig, cli: list[str], sweep_dir: str):
    import optuna

    from train import train

    def objective(trial) -> float:
        # First, so a kill at any later point leaves a trial heal_stale_trials can tell is orphaned.
        trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
        if sw.sampler == "grid" and "fixed_params" not in trial.storage.get_trial_system_attrs(trial._trial_id):
            trial.set_user_attr("fail_reason", "no grid point left: another worker took the last one")
            trial.study.stop()
            raise optuna.TrialPruned()
        values = suggest(trial, sw)
        run_dir = os.path.join(sweep_dir, f"trial-{trial.number:04d}")
        for i in itertools.count(2):  # a study of the same name before (deleted, or in other storage) ran here
            if not os.path.exists(run_dir):
                break
            run_dir = os.path.join(sweep_dir, f"trial-{trial.number:04d}-{i}")
        t0 = time.time()
        trial.set_user_attr("run_dir", run_dir)
        try:
            cfg = trial_config(base, sw, cli, values, run_dir)
            result = train(cfg, trial=trial)
        except optuna.TrialPruned:
            trial.set_user_attr("minutes", (time.time() - t0) / 60)
            raise
        except KeyboardInterrupt:  # no reason recorded: an interrupted grid point is queued again
            raise
        except BaseException as e:  # NaN, OOM, bad values: recorded, the study goes on
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("minutes", (time.time() - t0) / 60)
            raise
        trial.set_user_attr("minutes", (time.time() - t0) / 60)
        trial.set_user_attr("epochs", result["epochs"])
        trial.set_user_attr("final_val_top1", result["final_val_top1"])
        # The per-epoch metrics, so a study carried to another machine still holds every run's curve.
        record = read_run(run_dir)
        trial.set_user_attr("history", record["history"] if record else [])
        if result["best_val_top1"] is None:
            raise ConfigError("sweeps select on validation: set data.val_fraction > 0")
        return result["best_val_top1"]

    return objective


def heal_stale_trials(study, other_hosts: bool = False) -> list[int]:
    """Mark FAIL the trials left RUNNING by a process of this host that is gone (kill -9, a crash, a power
    cut), so the study does not wait on them forever; with `other_hosts`, also every RUNNING trial of
    another machine (the user's word that it is gone: a study carried to a new machine). A grid queues
    such a point again on its next start (queue_missing_points); a search never proposes a point twice."""
    from optuna.trial import TrialState

    healed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("owner", "")).rpartition(":")
        mine = host == socket.gethostname()
        if (mine and pid.isdigit() and not process_alive(int(pid))) or (other_hosts and host and not mine):
            study.tell(t.number, state=TrialState.FAIL)
            healed.append(t.number)
    return healed


def queue_missing_points(study, sw: SweepConfig) -> int:
    """A grid is a queue of its points, keyed by their values: every point that no trial has finished, is
    running or waits for is queued. A trial that failed with a reason (diverged, bad values) finished its
    point; one failed without (interrupted, or its process died) did not. Waiting trials without values
    (queued by grid id, as this file did before) are failed: their point depends on the sampler's shuffle,
    so they could repeat a finished one."""
    from optuna.trial import TrialState

    space = grid_space(sw)
    for t in study.get_trials(deepcopy=False):
        for key, dist in t.distributions.items():  # Optuna refuses a parameter whose choices change
            if key in space and list(getattr(dist, "choices", space[key])) != space[key]:
                raise ConfigError(f"grid `{key}` of study `{sw.study}` was {list(dist.choices)}, the file now says "
                                  f"{space[key]}; Optuna cannot change a study's values: run the new grid as a "
                                  f"new study (--study NAME)")
    taken = []
    for t in study.get_trials(deepcopy=False):
        values = {**t.system_attrs.get("fixed_params", {}), **t.params}
        if t.state == TrialState.WAITING and not values:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "queued by grid id (old sweep.py); "
                                               "its point is queued again by value")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL or "fail_reason" in t.user_attrs:
            taken.append({k: values.get(k) for k in space})
    points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    missing = [p for p in points if p not in taken]
    for point in missing:
        study.enqueue_trial(point, skip_if_exists=False)
    return len(missing)


def run_worker(config_path: str, cli: list[str], storage_url: str, study: str, trials: int, target: int,
               timeout: float, threads: int, seed: int) -> None:
    """One optimisation process (the parent itself, or a spawned worker); stops at `target` trials in the study."""
    import optuna
    import torch
    from optuna.trial import TrialState

    if threads:
        torch.set_num_threads(threads)
    sw, base = load_sweep(config_path)
    sw.study = study
    st = make_study(sw, storage_url, seed)
    sweep_dir = os.path.join(trial_config(base, sw, cli, {}).out_dir, "sweeps", study)
    # Queued trials count once they start: a worker stops when the study holds `target` started trials.
    started = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    callbacks = [optuna.study.MaxTrialsCallback(target, states=started)]
    st.optimize(objective_for(base, sw, cli, sweep_dir), n_trials=trials, timeout=timeout or None,
                catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
    write_outputs(st, sw, base, cli, sweep_dir)  # whoever finishes last leaves the complete table


def _worker_entry(args: tuple) -> None:
    import optuna

    if sys.platform.startswith("linux"):  # die with the parent, even on kill -9 (its trial is healed later)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(*args)


# ---------------------------------------------------------------------------------------------
# Results

def fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def results_table(study, sw: SweepConfig) -> str:
    import optuna

    lines = [f"# Sweep `{study.study_name}`", "",
             "| trial | state | params | val top-1 | epochs | minutes | note |", "|---|---|---|---|---|---|---|"]
    for t in study.trials:
        val = f"{t.value:.4f}" if t.value is not None else "-"
        note = t.user_attrs.get("fail_reason", "")
        if t.state == optuna.trial.TrialState.FAIL and not note:
            note = "its process died (marked failed on the next start; a grid runs the point again)"
        if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            last = max(t.intermediate_values)
            val = f"({t.intermediate_values[last]:.4f})"
            note = f"pruned after epoch {last}"
        lines.append(f"| {t.number} | {t.state.name} | {fmt_params(t.params)} | {val} | "
                     f"{t.user_attrs.get('epochs', len(t.intermediate_values) or '-')} | "
                     f"{t.user_attrs.get('minutes', 0):.2f} | {note.replace('|', '/')} |")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if sw.sampler == "grid" and done:
        axes = [k for k in sw.grid if k != "seed"]
        groups: dict = {}
        for t in done:
            groups.setdefault(tuple(t.params.get(k) for k in axes), []).append(t.value)
        rows = sorted(groups.items(), key=lambda kv: -statistics.mean(kv[1]))
        lines += ["", "## Grouped over seeds (sorted by mean)", "",
                  f"| {' | '.join(axes) or 'all'} | mean val top-1 | std | n |", "|" + "---|" * (len(axes or [1]) + 3)]
        for key, vals in rows:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            lines.append(f"| {' | '.join(map(str, key)) or 'all'} | {statistics.mean(vals):.4f} | ± {std:.4f} | "
                         f"{len(vals)} |")
    elif done:
        # Optuna's default estimator (PED-ANOVA) contrasts the top 10% of trials with all of them, so below
        # 20 trials its "top" is a single trial and the numbers are noise (or, with fewer, equal and warned).
        if len(done) < 20:
            lines += ["", f"Parameter importances: need at least 20 finished trials, have {len(done)}."]
        else:
            try:
                imp = optuna.importance.get_param_importances(study)
                lines += ["", "## Parameter importances (PED-ANOVA)", ""]
                lines += [f"- `{k}`: {v:.3f}" for k, v in imp.items()]
            except Exception as e:  # e.g. every trial took the same values
                lines += ["", f"Parameter importances unavailable: {e}"]
    if done:
        best = study.best_trial
        lines += ["", f"Best: trial {best.number}, val top-1 {best.value:.4f} ({fmt_params(best.params)})"]
    return "\n".join(lines) + "\n"


def write_outputs(study, sw: SweepConfig, base: str, cli: list[str], sweep_dir: str) -> str:
    import optuna

    make_dir(sweep_dir)
    table = results_table(study, sw)
    write_text(os.path.join(sweep_dir, "results.md"), table)
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best = study.best_trial
        values = {k: decode(v) for k, v in best.params.items()}
        cfg = trial_config(base, sw, cli, values)
        cfg.name = f"{sw.study}-best"
        save_config(cfg, os.path.join(sweep_dir, "best.yaml"))
    return table


# ---------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Optuna searches and ablation grids over train().")
    ap.add_argument("--config", default="configs/sweep.yaml", help="sweep file (see configs/ablations/)")
    ap.add_argument("--trials", type=int, help="trials to run in this invocation (default: the file's `trials`)")
    ap.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    ap.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., journal:PATH)")
    ap.add_argument("--study", help="study name (default: the file's `study` or its name)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes on this machine (cores are split)")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--heal-other-hosts", action="store_true",
                    help="mark FAIL the trials other machines left RUNNING (they are gone), so a grid re-runs them")
    ap.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="applied to every trial's base config")
    args = parse_command_line(ap, argv)
    return cli(lambda: run_sweep(args))


def trials_to_run(study, sw: SweepConfig, requested: int | None) -> int:
    """A search runs `requested` (or the file's `trials`) more; a grid runs only its missing points."""
    from optuna.trial import TrialState

    if sw.sampler != "grid":
        return requested if requested is not None else sw.trials
    queue_missing_points(study, sw)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if not waiting:
        print(f"grid `{sw.study}` is complete; nothing to run", file=sys.stderr)
    return waiting if requested is None else min(waiting, requested)


def run_sweep(args) -> int:
    import optuna
    from optuna.trial import TrialState

    for flag, value, ok in (("--trials", args.trials, args.trials is None or args.trials >= 0),
                            ("--timeout", args.timeout, args.timeout is None or args.timeout >= 0),
                            ("--workers", args.workers, args.workers >= 1)):
        if not ok:
            raise ConfigError(f"{flag} {value}: must be {'>= 1' if flag == '--workers' else '>= 0'}")
    sw, base = load_sweep(args.config)
    if args.study:
        sw.study = args.study
    validate_space(base, sw, args.overrides)
    cfg0 = trial_config(base, sw, args.overrides, {})
    storage = args.storage or sw.storage or f"sqlite:///{os.path.join(cfg0.out_dir, 'optuna.db')}"
    sweep_dir = os.path.join(cfg0.out_dir, "sweeps", sw.study)
    load_split(cfg0.data, "train")  # fail fast (and fill the folder cache once) before any trial
    study = make_study(sw, storage, args.seed)
    healed = heal_stale_trials(study, args.heal_other_hosts)
    if healed:
        print(f"trials {healed} were left RUNNING by a process that is gone; marked FAIL", file=sys.stderr)
    so_far = f"{len(study.trials)} trials so far" if study.trials else "new study"  # before a grid queues points
    trials = trials_to_run(study, sw, args.trials)
    timeout = args.timeout if args.timeout is not None else sw.timeout
    print(f"study `{sw.study}` in {storage}: {so_far}, running up to {trials} more "
          f"with {args.workers} worker(s); runs under {sweep_dir}", file=sys.stderr)
    target = sum(1 for t in study.trials if t.state != TrialState.WAITING) + trials
    # A resumed study must not replay the first invocation's proposals: the sampler seed moves with it.
    seed = mix_seed(args.seed, len(study.trials)) % 2**31
    procs = []
    try:
        if trials and args.workers > 1:
            threads = max(1, (os.cpu_count() or 1) // args.workers)
            per = math.ceil(trials / args.workers)
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=_worker_entry, args=((args.config, args.overrides, storage, sw.study, per,
                                                              target, timeout, threads, seed + i),))
                     for i in range(args.workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        elif trials:
            run_worker(args.config, args.overrides, storage, sw.study, trials, target, timeout, 0, seed)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume the study", file=sys.stderr)
    finally:
        for p in procs:  # an interrupted parent stops its workers
            if p.is_alive():
                p.terminate()
                p.join()
    study = optuna.load_study(study_name=sw.study, storage=make_storage(storage))
    lost = heal_stale_trials(study)
    print(write_outputs(study, sw, base, args.overrides, sweep_dir))
    print(f"results: {os.path.join(sweep_dir, 'results.md')}", file=sys.stderr)
    dead = [i for i, p in enumerate(procs) if p.exitcode not in (0, None)]
    if dead:
        missing = max(0, target - len(study.trials))
        print(f"error: worker(s) {dead} died (exit codes {[procs[i].exitcode for i in dead]}); trials {lost} "
              f"failed with them and {missing} planned trial(s) did not run; rerun the same command to run them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
