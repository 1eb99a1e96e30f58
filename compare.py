"""Compare runs: group run folders by the config keys that differ between them; mean ± sd over seeds.

    python compare.py runs/sweeps/seed_comparisons [--train-split]

Every folder under the given ones that holds config.yaml + metrics.jsonl is a run. Runs whose configs differ
only in the seed (and in where/how they ran: RESUME_KEYS) form one row. The base row is the one that, for
every key that varies, has the value most rows share (in a one-change-per-row grid: the unchanged recipe).
Per row: best and final validation top-1 (mean ± sd over seeds), the difference of the final top-1 from
the base with its standard error, the un-augmented training-split top-1 of the final model (the other side
of the generalisation gap, with --train-split or when a record carries it), minutes, and a verdict only
where the difference exceeds twice its standard error. report.py --comparisons writes the same table into
REPORT.md from committed records.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass

import yaml

from config import RESUME_KEYS, flatten, load_config, parse_command_line, to_dict
from runtime import DataError, cli

NOT_A_ROW = set(RESUME_KEYS) | {"seed"}  # the seed is the repeat axis; the rest say where and how a run went


def read_run(path: str) -> dict | None:
    """A run directory as a record {"epochs", "config", "history"}; None before its first validated epoch."""
    metrics, config = os.path.join(path, "metrics.jsonl"), os.path.join(path, "config.yaml")
    if not (os.path.isfile(metrics) and os.path.isfile(config)):
        return None
    with open(metrics) as f:
        history = [json.loads(line) for line in f if line.strip()]
    with open(config) as f:
        cfg = yaml.safe_load(f)
    if not history or "val_top1" not in history[0]:
        return None
    return {"epochs": cfg["train"]["epochs"], "config": cfg, "history": history}


def find_runs(folders: list[str]) -> dict[str, dict]:
    """{run folder: record} for every finished run under `folders`."""
    out = {}
    for top in folders:
        if not os.path.isdir(top):
            raise DataError(f"{top} is not a folder of runs; pass e.g. runs/sweeps/<study>")
        for path, _, files in sorted(os.walk(top)):
            if "metrics.jsonl" in files:
                record = read_run(path)
                if record and finished(record):
                    out[path] = record
    return out


def finished(record: dict) -> bool:
    return bool(record["history"]) and record["history"][-1]["epoch"] >= record["epochs"]


@dataclass
class Row:
    change: dict  # {key: value} where this row differs from the base; {} for the base
    runs: list[dict]

    def values(self, key: str) -> list[float]:
        if key == "train_top1":
            return [r["train_top1"] for r in self.runs if r.get("train_top1") is not None]
        pick = {"best": lambda h: max(e["val_top1"] for e in h), "final": lambda h: h[-1]["val_top1"],
                "minutes": lambda h: sum(e["epoch_s"] for e in h) / 60}[key]
        return [pick(r["history"]) for r in self.runs]


def varying_keys(records: list[dict]) -> list[str]:
    """Config keys (dotted) whose values differ between the records, seeds and where/how keys aside."""
    flats = [flatten(to_dict(load_config(base=r["config"]))) for r in records]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if k not in NOT_A_ROW and len({json.dumps(f.get(k)) for f in flats}) > 1]


def group(records: list[dict], base: dict | None = None) -> list[Row]:
    """Rows of runs alike in every key that varies: the base row first, then by label, which keeps an
    axis's rows together (model.activation=gelu, model.activation=silu, model.init=paper, ...). `base` (a
    config dict, e.g. a grid's unchanged recipe) is what each row's change is measured from; without it,
    the base is the value most rows share for every varying key."""
    if not records:
        return []
    flats = [flatten(to_dict(load_config(base=r["config"]))) for r in records]
    if base is None:
        keys = varying_keys(records)
        ref = {k: Counter(json.dumps(f.get(k)) for f in flats).most_common(1)[0][0] for k in keys}
    else:
        b = flatten(to_dict(load_config(base=base)))
        keys = sorted(k for k in {k for f in flats for k in f} - NOT_A_ROW
                      if any(json.dumps(f.get(k)) != json.dumps(b.get(k)) for f in flats))
        ref = {k: json.dumps(b.get(k)) for k in keys}
    rows: dict[str, tuple[dict, list[dict]]] = {}
    for r, f in zip(records, flats):
        change = {k: f.get(k) for k in keys if json.dumps(f.get(k)) != ref[k]}
        runs = rows.setdefault(json.dumps(change, sort_keys=True), (change, []))[1]
        # A second run of the same recipe and seed repeats a measurement (training is seeded): counting it
        # would inflate n and shrink the spread, so a row keeps one run per seed.
        if all(other["config"].get("seed") != f.get("seed") for other in runs):
            runs.append(r)
    return sorted((Row(change, runs) for change, runs in rows.values()),
                  key=lambda row: (bool(row.change), label(row.change)))


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def difference(row: Row, base: Row) -> tuple[float, float | None]:
    """Final top-1 of `row` minus the base's, and its standard error sqrt(sd_a^2/n_a + sd_b^2/n_b)."""
    a, b = row.values("final"), base.values("final")
    if len(a) < 2 or len(b) < 2:
        return statistics.mean(a) - statistics.mean(b), None
    return (statistics.mean(a) - statistics.mean(b),
            math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b)))


def verdict(diff: float, se: float | None) -> str:
    if se is None or abs(diff) <= 2 * se:
        return ""
    return "better" if diff > 0 else "worse"


def label(change: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in change.items()) or "base"


def fmt(xs: list[float]) -> str:
    if not xs:
        return "—"
    m, sd = mean_sd(xs)
    return f"{m:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def base_row(rows: list[Row]) -> Row | None:
    """The base row (rows come base first), or None while the base has no finished run."""
    return rows[0] if rows and not rows[0].change else None


def against_base(row: Row, base: Row | None) -> tuple[str, str]:
    """The row's `Δ final vs base (± SE)` text and verdict ("better", "worse" or "")."""
    if base is None or row is base:
        return ("—" if base is not None else "no base run yet"), ""
    diff, se = difference(row, base)
    return f"{diff:+.4f}" + (f" ± {se:.4f}" if se is not None else " (n<2: no SE)"), verdict(diff, se)


def table(rows: list[Row]) -> str:
    """The markdown comparison table (the base first; differences are against it). Until a run of the base
    itself has finished (an unfinished grid), no row has a difference."""
    lines = ["| change | n | best val top-1 | final val top-1 | Δ final vs base (± SE) | train top-1 (final) "
             "| minutes | verdict | precision |", "|---|---|---|---|---|---|---|---|---|"]
    base = base_row(rows)
    for row in rows:
        delta, word = against_base(row, base)
        minutes = statistics.mean(row.values("minutes"))
        fit = row.values("train_top1")
        fit_text = fmt(fit) + (f" (n={len(fit)})" if fit and len(fit) < len(row.runs) else "")
        lines.append(f"| `{label(row.change)}` | {len(row.runs)} | {fmt(row.values('best'))} | "
                     f"{fmt(row.values('final'))} | {delta} | {fit_text} | {minutes:.1f} | "
                     f"{word} | {precisions(row)} |")
    return "\n".join(lines) + "\n"


def ranks(xs: list[float]) -> list[float]:
    """Rank of each value, 1 = the largest; tied values share the mean of the ranks they span."""
    order = sorted(range(len(xs)), key=lambda i: -xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks; None under 3 pairs or when
    one side is all ties."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None


# What the full budget says of the screening budget's verdict on a row.
AGREEMENT = {("", ""): "agree: within noise at both", ("better", "better"): "agree", ("worse", "worse"): "agree",
             ("", "better"): "screen missed a gain", ("", "worse"): "screen missed a loss",
             ("better", ""): "screen's gain not borne out", ("worse", ""): "screen's loss not borne out",
             ("better", "worse"): "reversed", ("worse", "better"): "reversed"}


def budgets_table(screen: list[Row], full: list[Row]) -> tuple[str, float | None, int]:
    """Each row's final top-1, Δ vs its budget's base and verdict at a screening and a full budget side by
    side (rows matched by their change), each row's rank by mean final top-1 at both, and Spearman's rank
    correlation of the two orderings over the rows both budgets have. Returns (markdown, rho, rows in both)."""
    by_label = {label(r.change): r for r in screen}
    both = [(by_label[label(r.change)], r) for r in full if label(r.change) in by_label]
    means = [(statistics.mean(s.values("final")), statistics.mean(f.values("final"))) for s, f in both]
    rank_s, rank_f = ranks([m[0] for m in means]), ranks([m[1] for m in means])
    rank_of = {label(f.change): (a, b) for (_, f), a, b in zip(both, rank_s, rank_f)}
    lines = ["| change | screen: final val top-1 | screen: Δ vs base (± SE) | screen verdict | full: final val "
             "top-1 | full: Δ vs base (± SE) | full verdict | rank screen / full | the full budget says |",
             "|---|---|---|---|---|---|---|---|---|"]
    sb, fb = base_row(screen), base_row(full)
    for row in full + [r for r in screen if label(r.change) not in {label(f.change) for f in full}]:
        name = label(row.change)
        s, f = by_label.get(name), (row if row in full else None)
        cells = []
        for r, b in ((s, sb), (f, fb)):
            if r is None:
                cells += ["not run", "", ""]
                continue
            delta, word = against_base(r, b)
            cells += [f"{fmt(r.values('final'))} (n={len(r.runs)})", delta, word or "—"]
        pair = rank_of.get(name)
        rank = f"{pair[0]:g} / {pair[1]:g}" if pair else "—"
        judged = (s is not None and f is not None and sb is not None and fb is not None and s is not sb
                  and None not in (difference(s, sb)[1], difference(f, fb)[1]))
        says = AGREEMENT[(cells[2].strip("—"), cells[5].strip("—"))] if judged else "—"
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {rank} | {says} |")
    rho = spearman([m[0] for m in means], [m[1] for m in means])
    return "\n".join(lines) + "\n", rho, len(both)


def precisions(row: Row) -> str:
    """How the row's runs computed (float32, bfloat16, ...): minutes, and at the margin accuracy, depend on it."""
    seen = sorted({e.get("precision", "not recorded") for r in row.runs for e in r["history"]})
    return ", ".join(seen)


def train_split_top1(run_dir: str) -> float | None:
    """Un-augmented top-1 of the run's final model on the images it trained on."""
    last = os.path.join(run_dir, "last.pt")
    if not os.path.isfile(last):
        return None
    from evaluate import evaluate

    return evaluate(last, "train")["top1"]


def plot(rows: list[Row], path: str, title: str) -> None:
    """Per row, each seed's final validation top-1 (dots) and their mean (bar); the base marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4), dpi=110)
    for i, row in enumerate(rows):
        finals = row.values("final")
        colour = "tab:blue" if row.change else "tab:red"
        ax.barh(i, statistics.mean(finals), color=colour, alpha=0.25, height=0.7)
        ax.plot(finals, [i] * len(finals), "o", color=colour, ms=5)
    if not rows[0].change:
        ax.axvline(statistics.mean(rows[0].values("final")), color="tab:red", lw=1, ls="--", label="base mean")
    ax.set_yticks(range(len(rows)), [label(r.change) for r in rows], fontsize=8)
    ax.invert_yaxis()
    lo = min(min(r.values("final")) for r in rows)
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(max(r.values("final")) for r in rows) + 0.03))
    ax.set_xlabel("final validation top-1 (dots: seeds, bars: mean)")
    ax.set_title(title, fontsize=9)
    if not rows[0].change:
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Group runs by the config keys that differ; mean ± sd over seeds.")
    ap.add_argument("folders", nargs="+", help="folders holding run directories, e.g. runs/sweeps/<study>")
    ap.add_argument("--train-split", action="store_true",
                    help="also score each final model on its training images (one evaluation per run)")
    args = parse_command_line(ap, argv)
    return cli(lambda: compare_main(args))


def compare_main(args) -> int:
    found = find_runs(args.folders)
    if not found:
        raise DataError(f"no finished runs under {', '.join(args.folders)}")
    if args.train_split:
        for path, record in found.items():
            record["train_top1"] = train_split_top1(path)
    print(table(group(list(found.values()))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
