"""Re-run the seed's CIFAR-10 table and rebuild REPORT.md: `python report.py [--train] [--only NAME ...] [key=value ...]`.

With --train every row that is missing or unfinished is trained (an unfinished one resumes from its
last.pt, so after an interrupted session the same command carries on). Then each run's per-epoch
metrics are copied from its run directory into a small record, docs/results/<config>-s<seed>.json, which
is committed: run directories hold checkpoints, stay out of git and can be lost with a machine, the
records cannot. REPORT.md's table (between its markers) and docs/learning_curves.png are built from the
records; docs/confusion_best.png needs the best run's best.pt, so it is only redrawn while that exists.
key=value overrides apply to every run, e.g. data.root=/data/cifar10 device=cuda.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from dataclasses import dataclass

import compare
from compare import read_run
from config import load_config, parse_command_line, recipe_changes, to_dict
from runtime import ConfigError, TrainingDiverged, cli, load_checkpoint, save_figure, write_text
from train import train


@dataclass(frozen=True)
class Row:
    config: str         # configs/{config}.yaml
    label: str
    seed_result: str    # the seed author's CIFAR-10 *test* top-1 (GPU runs, original PNG images)
    seeds: tuple[int, ...] = (0,)


ROWS = [
    Row("cifar10_baseline", "no augmentation, no dropout", "74%"),
    Row("cifar10_augment", "augmentation (crop + flip)", "77%"),
    Row("cifar10_dropout", "dropout 0.5", "78%"),
    Row("cifar10_aug_dropout", "augmentation + dropout", "78%"),
    # The seed's network since 2026-12-02 (default init, its LRN); the Kaiming/strong-LRN runs, whose seed 1
    # collapsed, are in docs/results/superseded/.
    Row("cifar10_best", "best: LRN + MultiStepLR [20, 30], aug + dropout", "86%", (0, 1)),
    Row("cifar10_modern", "modern: BatchNorm, nesterov, cosine, label smoothing, cutout", "—", (0, 1)),
]
# The shared JPEG training images (data/train/<class>/*.jpg), 45,000 train / 5,000 validation.
DATA = ["data.name=folder", "data.val_fraction=0.1"]
BEGIN, END = "<!-- report.py table: begin -->", "<!-- report.py table: end -->"


def run_dir(runs: str, row: Row, seed: int) -> str:
    return os.path.join(runs, f"{row.config}-s{seed}")


def train_row(row: Row, seed: int, runs: str, overrides: list[str]) -> str:
    """Train (or resume, or skip) one run; returns what happened."""
    path = run_dir(runs, row, seed)
    cfg = load_config(os.path.join("configs", f"{row.config}.yaml"),
                      DATA + overrides + [f"seed={seed}", f"run_dir={path}", "train.stop_on_collapse=true"])
    last = os.path.join(path, "last.pt")
    ran = read_run(path)
    if ran and ran["history"][-1].get("collapsed"):  # retraining the same seed collapses the same way
        return f"collapsed in epoch {ran['history'][-1]['epoch']}, not retrained (move {path} away to retry)"
    if not os.path.exists(last):
        train(cfg)
        return "trained"
    ckpt = load_checkpoint(last)
    changed = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in recipe_changes(ckpt["config"], cfg).items()]
    if changed:  # train() would refuse the resume too; this says what to do in report.py's terms
        raise ConfigError(f"{path} was trained with a different recipe ({'; '.join(changed[:3])}); "
                          f"move that folder away to retrain it, or pass the same overrides")
    if ckpt["epoch"] >= cfg.train.epochs:
        return "already finished"
    train(cfg, resume=last)
    return f"resumed from epoch {ckpt['epoch']}"


# ---------------------------------------------------------------------------------------------
# Reading runs back

def summarise(record: dict) -> dict:
    """Best/final validation top-1, cost and whether it finished (a run that collapsed has finished:
    train_row stops it there). A record whose history was lost carries these figures in "summary" instead (and a
    "note" saying what happened)."""
    history = record["history"]
    # train.py records the machine with every epoch; older records name it once, written by hand.
    older = record.get("hardware", "not recorded")
    machines = [f"{r['hardware']}, {r['precision']}" if "hardware" in r else older for r in history] or [older]
    machine = " + ".join(sorted(set(machines), key=machines.index))
    if not history:
        return {**record["summary"], "epochs": record["epochs"], "done": True, "collapsed": False, "history": [],
                "machine": machine, "config": record.get("config")}
    collapsed = bool(history[-1].get("collapsed"))
    return {"epochs": record["epochs"], "history": history, "collapsed": collapsed,
            "done": collapsed or history[-1]["epoch"] >= record["epochs"],
            "best": max(r["val_top1"] for r in history), "final": history[-1]["val_top1"],
            # Medians, so an epoch that shared the two cores with something else (a CI run, a paused
            # process) does not skew what a run costs on this machine.
            "minutes": statistics.median(r["epoch_s"] for r in history) * len(history) / 60,
            "img_per_s": statistics.median(r["img_per_s"] for r in history), "machine": machine,
            "config": record.get("config")}


def sync_records(runs: str, results: str) -> dict[tuple[str, int], dict]:
    """Copy every table run found under `runs` into `results`, then return {(config, seed): summary} of
    all records. A finished record is not replaced by an unfinished run (a retrain in progress)."""
    out = {}
    for row in ROWS:
        for seed in row.seeds:
            name = f"{row.config}-s{seed}"
            path = os.path.join(results, f"{name}.json")
            kept = None
            if os.path.isfile(path):
                with open(path) as f:
                    kept = json.load(f)
            found = read_run(run_dir(runs, row, seed))
            if found and not (kept and summarise(kept)["done"] and not summarise(found)["done"]):
                os.makedirs(results, exist_ok=True)
                write_text(path, json.dumps(found, indent=1) + "\n")
                kept = found
            elif found:
                print(f"{name}: keeping the finished record {path}; the unfinished run in {runs}/ replaces it "
                      f"once it finishes")
            if kept:
                out[row.config, seed] = summarise(kept)
    return out


def mean_spread(values: list[float]) -> str:
    """'0.8612' for one run; 'mean ± half-range (n=2)' for several."""
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.4f}"
    return f"{m:.4f} ± {(max(values) - min(values)) / 2:.4f} (n={len(values)})"


def command(row: Row, overrides: list[str]) -> str:
    seeds = "" if row.seeds == (0,) else f" seed=S` for S in {', '.join(map(str, row.seeds))}"
    return f"`python train.py --config configs/{row.config}.yaml {' '.join(DATA + overrides)}{seeds or '`'}"


def as_override(key: str, value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f'"{key}={text}"' if isinstance(value, list) else f"{key}={text}"


def recorded_recipe(row: Row, runs: list[dict], overrides: list[str]) -> list[str]:
    """The overrides that turn the row's preset, as it reads today, into the recipe its records were trained
    with: a preset changed after its runs (e.g. cifar10_net.yaml's init) must not make the command a different run."""
    changes = {}
    for r in runs:
        if r["config"]:  # summary-only records (history lost) kept no config
            preset = load_config(os.path.join("configs", f"{row.config}.yaml"),
                                 DATA + overrides + [f"seed={r['config']['seed']}"])
            changes.update({k: old for k, (old, _) in recipe_changes(r["config"], preset).items()})
    return [as_override(k, v) for k, v in sorted(changes.items())]


def table(found_runs: dict[tuple[str, int], dict], results: str, overrides: list[str]) -> str:
    lines = ["| experiment | seed's test top-1 | our best val top-1 | our final val top-1 | epochs | "
             "wall min / run | train img/s | machine, precision | command |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for row in ROWS:
        found = {s: found_runs[row.config, s] for s in row.seeds if (row.config, s) in found_runs}
        if not found:
            lines.append(f"| {row.label} | {row.seed_result} | not run | | | | | | {command(row, overrides)} |")
            continue
        for s, r in found.items():
            if r["collapsed"]:
                h = r["history"][-1]
                notes.append(f"‡ {row.config} seed {s} collapsed in epoch {h['epoch']} (the same logits for every "
                             f"image, validation top-1 {h['val_top1']:.4f}) and is left out of its row's figures.")
        done = [r for r in found.values() if r["done"]]
        # Finished runs only, once there are any; a collapsed run is footnoted instead, unless all did.
        shown = [r for r in done if not r["collapsed"]] or done or list(found.values())
        epochs = f"{shown[0]['epochs']}" if done else \
            f"{'/'.join(str(r['history'][-1]['epoch']) for r in found.values())} of {shown[0]['epochs']} (running)"
        if any(not r["history"] for r in shown):
            epochs += " †"
        if any(r["collapsed"] for r in found.values()):
            epochs += " ‡"
        lines.append(f"| {row.label} | {row.seed_result} | {mean_spread([r['best'] for r in shown])} | "
                     f"{mean_spread([r['final'] for r in shown])} | {epochs} | "
                     f"{sum(r['minutes'] for r in shown) / len(shown):.0f} | "
                     f"{sum(r['img_per_s'] for r in shown) / len(shown):.0f} | "
                     f"{'; '.join(sorted({r['machine'] for r in shown}))} | "
                     f"{command(row, overrides + recorded_recipe(row, shown, overrides))} |")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    if any(not r["history"] for r in found_runs.values()):
        lines.append("\n† Only the summary of this run survives (see the \"note\" in its record): its run directory, "
                     "checkpoints and per-epoch history were lost, so it is missing from `docs/learning_curves.png`.")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + f"\n\n_Generated by `python report.py` from `{results}/` on {stamp}._"


def plot_curves(runs: list[tuple[str, dict]], path: str) -> None:
    """Validation top-1 against epoch, every run on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, r in runs:
        if not r["history"]:
            continue
        ax.plot([h["epoch"] for h in r["history"]], [h["val_top1"] for h in r["history"]],
                label=f"{name} (collapsed)" if r["collapsed"] else name, linestyle="-" if r["done"] else ":",
                marker="x" if r["collapsed"] else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("CIFAR-10 (JPEG) validation top-1; dotted = unfinished")
    save_figure(fig, path)


def write_report(path: str, body: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers (a new REPORT.md gets just a heading and the section)."""
    text = f"# AlexNet lab: the seed's CIFAR-10 table, re-run\n\n{begin}\n{end}\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin not in text or end not in text:
        raise ConfigError(f"{path} lacks the markers {begin} ... {end}; add them where the section goes")
    head, rest = text.split(begin, 1)
    write_text(path, f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")


# ---------------------------------------------------------------------------------------------
# The seed's comparisons (configs/ablations/seed_comparisons.yaml), from committed records

# A grid at the seed's own budget (its study named *_full*, its extra-seed studies too) has its own section,
# records (docs/results/comparisons_full/) and figure; the screening grid and any other grid use `comparisons`.
# The full section sets each row beside the screening records, when there are any.
FULL, SCREEN = "comparisons_full", "comparisons"


def section_of(sweep_dir: str) -> str:
    return FULL if "_full" in os.path.basename(os.path.normpath(sweep_dir)) else SCREEN


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}: begin -->", f"<!-- {section}: end -->"


def sync_comparisons(sweep_dir: str, records: str) -> int:
    """Copy each finished run under `sweep_dir` into `records`/<trial>.json, with its final model's
    training-split top-1 (one evaluation, done once per run); returns how many were new."""
    new = 0
    found = compare.find_runs([sweep_dir]) if os.path.isdir(sweep_dir) else {}
    for path, record in found.items():
        out = os.path.join(records, f"{os.path.basename(os.path.dirname(path))}-{os.path.basename(path)}.json")
        if os.path.isfile(out):
            continue
        record["train_top1"] = compare.train_split_top1(path)
        os.makedirs(records, exist_ok=True)
        write_text(out, json.dumps(record))
        new += 1
    return new


def recover_from_study(storage: str, sweep_file: str, overrides: list[str], records: str) -> int:
    """Rebuild the record of each finished trial of `study` whose run folder is gone (a study carried to a
    new machine) from the study itself: the config from the trial's grid values, the per-epoch history
    from its user attrs (or, for trials run before sweep.py stored them, its reported validation top-1s).
    The training-split top-1 needs the lost model, so it stays empty. Returns how many were new."""
    import optuna

    import sweep

    sw, base = sweep.load_sweep(sweep_file)
    study = sw.study
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trials = optuna.load_study(study_name=study, storage=sweep.make_storage(storage)).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    new = 0
    for t in trials:
        out = os.path.join(records, f"{study}-trial-{t.number:04d}.json")
        if os.path.isfile(out):
            continue
        values = {k: sweep.decode(v) for k, v in t.params.items()}
        cfg = to_dict(sweep.trial_config(base, sw, overrides, values, t.user_attrs.get("run_dir", "")))
        epoch_s = 60 * t.user_attrs.get("minutes", 0) / max(1, len(t.intermediate_values))
        history = t.user_attrs.get("history") or [{"epoch": int(e), "val_top1": v, "epoch_s": epoch_s}
                                                   for e, v in sorted(t.intermediate_values.items())]
        record = {"epochs": cfg["train"]["epochs"], "config": cfg, "history": history, "train_top1": None,
                  "recovered_from": storage}
        if compare.finished(record):
            os.makedirs(records, exist_ok=True)
            write_text(out, json.dumps(record))
            new += 1
    return new


def read_records(folder: str) -> list[dict]:
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
        with open(os.path.join(folder, name)) as f:
            out.append(json.load(f))
    return out


def budgets_section(screen: list, full: list, screen_records: list[dict]) -> str:
    """The two budgets side by side: each row's verdict at both and the rank correlation of their orders."""
    text, rho, n = compare.budgets_table(screen, full)
    budget = screen_records[0]["config"]
    return (f"\n**The screening budget against this one.** Screening: {budget['train']['epochs']} epochs on "
            f"{budget['data']['subset'] or 'all'} training images, {len(screen_records)} records in "
            f"`docs/results/{SCREEN}/`. Spearman's rank correlation of the rows' mean final validation top-1 "
            f"at the two budgets, over the {n} row{'s' if n != 1 else ''} both have: "
            f"{'ρ = ' + format(rho, '.3f') if rho is not None else 'not defined yet (fewer than 3 rows)'}. "
            "A verdict needs a difference beyond twice its standard error at that budget.\n\n" + text)


def comparisons_section(rows: list, records: list[dict], command: str, section: str = SCREEN) -> str:
    cfg = records[0]["config"]
    machines = sorted({f"{e['hardware']}, {e['precision']}" for r in records for e in r["history"] if "hardware" in e})
    seeds = sorted({r["config"]["seed"] for r in records})
    budget = (f"Budget: {cfg['train']['epochs']} epochs on {cfg['data']['subset'] or 'all'} training images, "
              f"milestones {cfg['sched']['milestones']}; seeds {seeds}; validation: {cfg['data']['val_fraction']:.0%} "
              f"of the training images (never trained on). Machine: {'; '.join(machines) or 'not recorded'}.")
    recovered = sum("recovered_from" in r for r in records)
    lost = (f" {recovered} of the records were rebuilt from the grid's Optuna study after their run folders "
            "were lost with a machine: their configs and per-epoch validation curves are the study's, but they "
            "have no training-split top-1 (that needs the lost model), so that column averages fewer runs (its "
            "n is shown)." if recovered else "")
    return (f"{budget} Generated by `{command}` from {len(records)} records in "
            f"`docs/results/{section}/`; a verdict is given only where the difference exceeds twice its "
            f"standard error.{lost}\n\n{compare.table(rows)}\n![{section}](docs/{section}.png)\n")


def grid_file(sweep_dir: str) -> str:
    """The sweep file of the grid whose runs are under `sweep_dir` (runs/sweeps/<study>)."""
    return os.path.join("configs", "ablations", f"{os.path.basename(os.path.normpath(sweep_dir))}.yaml")


def comparison_base(sweep_dir: str, overrides: list[str]) -> dict | None:
    """The grid's unchanged recipe (its sweep file with no grid values and the same key=value overrides the
    sweep ran with), which every row's change is measured from."""
    import sweep

    path = grid_file(sweep_dir)
    if not os.path.isfile(path):
        return None  # compare.group falls back to the values most rows share
    sw, base = sweep.load_sweep(path)
    return to_dict(sweep.trial_config(base, sw, overrides, {}))


def records_base(records: list[dict], overrides: list[str]) -> dict | None:
    """The unchanged recipe of the grid that wrote `records` (the sweep folder their runs lived in)."""
    return comparison_base(os.path.dirname(records[0]["config"]["run_dir"]), overrides) if records else None


def run_comparisons(args) -> int:
    section = section_of(args.comparisons)
    records_dir = os.path.join(args.results, section)
    new = sync_comparisons(args.comparisons, records_dir)
    journal = os.path.join(records_dir, "optuna.journal")
    storage = args.storage or (f"journal:{journal}" if os.path.isfile(journal) else "")
    if storage and os.path.isfile(grid_file(args.comparisons)):
        new += recover_from_study(storage, grid_file(args.comparisons), args.overrides, records_dir)
    records = read_records(records_dir)
    if not records:
        raise ConfigError(f"no finished comparison runs in {args.comparisons} or {records_dir}; run "
                          f"python sweep.py --config {grid_file(args.comparisons)} first")
    rows = compare.group(records, comparison_base(args.comparisons, args.overrides))
    command = " ".join(["python report.py --comparisons", args.comparisons, *args.overrides])
    body = comparisons_section(rows, records, command, section)
    screen_records = read_records(os.path.join(args.results, SCREEN)) if section == FULL else []
    if screen_records:
        body += budgets_section(compare.group(screen_records, records_base(screen_records, args.overrides)),
                                rows, screen_records)
    write_report(args.report, body, *markers(section))
    os.makedirs(args.docs, exist_ok=True)
    compare.plot(rows, os.path.join(args.docs, f"{section}.png"),
                 f"one change from the base per row; {len(records)} runs")
    print(f"{args.report}: {section} of {len(rows)} rows from {len(records)} records ({new} new)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Re-run the seed's CIFAR-10 table and rebuild REPORT.md.")
    ap.add_argument("--train", action="store_true", help="train missing rows and resume unfinished ones first")
    ap.add_argument("--only", nargs="+", metavar="CONFIG",
                    help=f"train only these rows (the report still shows all): {', '.join(r.config for r in ROWS)}")
    ap.add_argument("--runs", default=os.path.join("runs", "report"), help="where the table's runs live")
    ap.add_argument("--results", default=os.path.join("docs", "results"),
                    help="where each run's record (per-epoch metrics, committed) is kept")
    ap.add_argument("--report", default="REPORT.md")
    ap.add_argument("--docs", default="docs", help="where the figures go")
    ap.add_argument("--comparisons", nargs="?", const=os.path.join("runs", "sweeps", "seed_comparisons"),
                    metavar="SWEEP_DIR", help="instead: regenerate REPORT.md's comparisons section from the grid's "
                                              "records (new finished runs in SWEEP_DIR are recorded first)")
    ap.add_argument("--storage", default="", metavar="URL",
                    help="with --comparisons: the grid's study, to record finished trials whose run folders "
                         "are gone (default: RESULTS/comparisons/optuna.journal if it exists)")
    ap.add_argument("--health", nargs="+", metavar="LABEL=RUN_DIR",
                    help="instead: draw these runs' first-epoch layer health and conv1 filters side by side "
                         "(docs/layer_health.png)")
    ap.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    args = parse_command_line(ap, argv, gather=("only", "health"))
    unknown = sorted(set(args.only or []) - {r.config for r in ROWS})
    if unknown:  # checked after the overrides are gathered, so `--only cifar10_best data.root=D` is no bad choice
        ap.error(f"argument --only: invalid choice: {', '.join(unknown)} (choose from {', '.join(r.config for r in ROWS)})")
    mode = run_comparisons if args.comparisons else run_health if args.health else run_report
    return cli(lambda: mode(args))


def run_health(args) -> int:
    from health import plot_runs

    runs = dict(item.split("=", 1) if "=" in item else (os.path.basename(item), item) for item in args.health)
    for name, path in runs.items():
        if not os.path.isdir(os.path.join(path, "first_epoch")):
            raise ConfigError(f"{path} has no first_epoch/ health record (train it with train.diagnostics=true)")
    os.makedirs(args.docs, exist_ok=True)
    out = os.path.join(args.docs, "layer_health.png")
    plot_runs(runs, out)
    print(f"layer health of {', '.join(runs)}: {out}")
    return 0


def train_rows(args) -> bool:
    """Train/resume the table's runs; True when every one ended without diverging."""
    ok = True
    for row in ROWS:
        if args.only and row.config not in args.only:
            continue
        for seed in row.seeds:
            try:
                print(f"{row.config} seed {seed}: {train_row(row, seed, args.runs, args.overrides)}", flush=True)
            except TrainingDiverged as e:  # one diverging row should not stop the table
                print(f"{row.config} seed {seed}: diverged: {e}", file=sys.stderr)
                ok = False
    return ok


def run_report(args) -> int:
    ok = train_rows(args) if args.train else True
    found = sync_records(args.runs, args.results)
    runs = [(f"{config} s{seed}", r) for (config, seed), r in found.items()]
    write_report(args.report, table(found, args.results, args.overrides))
    if any(r["history"] for _, r in runs):  # records without history have no curve to draw
        os.makedirs(args.docs, exist_ok=True)
        plot_curves(runs, os.path.join(args.docs, "learning_curves.png"))
    if runs:
        (config, seed), _ = max(found.items(), key=lambda kr: kr[1]["best"])
        ckpt = os.path.join(args.runs, f"{config}-s{seed}", "best.pt")
        if os.path.isfile(ckpt):
            from evaluate import evaluate, plot_confusion

            result = evaluate(ckpt, "val", overrides=args.overrides)
            os.makedirs(args.docs, exist_ok=True)
            plot_confusion(result, os.path.join(args.docs, "confusion_best.png"), f"{config} s{seed}, best.pt: ")
            print(f"confusion matrix of {config} s{seed} (val top-1 {result['top1']:.4f}) in {args.docs}/")
        else:
            print(f"confusion matrix not redrawn: the best run's checkpoint {ckpt} is not here")
    print(f"{args.report}: table of {len(runs)} runs from {args.results}/; curves in {args.docs}/")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
