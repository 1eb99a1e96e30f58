import json
import os
import warnings

import optuna
import pytest
import yaml

import report
import sweep
from config import flatten, load_config, parse_overrides, to_dict
from conftest import TINY
from train import train


@pytest.fixture
def make_sweep(tmp_path):
    """Write a tiny base config and a sweep file around it; returns (path, storage URL, out_dir)."""
    base = parse_overrides(TINY + ["train.epochs=1", "data.synthetic_size=300", f"out_dir={tmp_path / 'runs'}",
                                   f"data.cache_dir={tmp_path / 'cache'}"])
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))

    def make(body: dict, name="s") -> tuple[str, str]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"base": "base.yaml", **body}))
        return str(path), f"journal:{tmp_path / 'optuna.journal'}"
    return make


def trials(storage, study):
    return optuna.load_study(study_name=study, storage=sweep.make_storage(storage)).trials


def test_grid_runs_each_point_once_and_a_rerun_runs_none(make_sweep, tmp_path, capsys):
    path, storage = make_sweep({"grid": {"model.dropout": [0.0, 0.5], "seed": [0, 1]}, "pruner": "none"}, "g")
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    first = trials(storage, "g")
    assert len(first) == 4 and all(t.state.name == "COMPLETE" for t in first)
    assert sorted((t.params["model.dropout"], t.params["seed"]) for t in first) == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    assert len(trials(storage, "g")) == 4
    results = (tmp_path / "runs" / "sweeps" / "g" / "results.md").read_text()
    assert "Grouped over seeds" in results and "± " in results
    assert "Grouped over seeds" in capsys.readouterr().out
    for t in first:
        assert os.path.isfile(os.path.join(t.user_attrs["run_dir"], "last.pt"))


def test_search_resumes_and_adds_trials_and_best_yaml_trains(make_sweep, tmp_path):
    path, storage = make_sweep({"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                                "sampler": "random", "pruner": "none"}, "s")
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "2"]) == 0
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "1"]) == 0
    assert len(trials(storage, "s")) == 3
    best = tmp_path / "runs" / "sweeps" / "s" / "best.yaml"
    cfg = load_config(str(best), [f"out_dir={tmp_path / 'again'}"])
    best_trial = optuna.load_study(study_name="s", storage=sweep.make_storage(storage)).best_trial
    assert cfg.optim.lr == pytest.approx(best_trial.params["optim.lr"])
    assert train(cfg)["epochs"] == 1


def test_failing_trial_is_recorded_and_the_study_goes_on(make_sweep, tmp_path):
    path, storage = make_sweep({"grid": {"optim.lr": [1.0e12, 0.05]}, "pruner": "none",
                                "overrides": {"model.init": "paper", "train.log_every": 1}}, "f")
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    states = {t.params["optim.lr"]: t for t in trials(storage, "f")}
    assert states[1.0e12].state.name == "FAIL" and "NaN" in states[1.0e12].user_attrs["fail_reason"]
    assert states[0.05].state.name == "COMPLETE"
    assert "TrainingDiverged" in (tmp_path / "runs" / "sweeps" / "f" / "results.md").read_text()
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    assert len(trials(storage, "f")) == 2  # a point that failed with a reason is done: not run again


def test_pruning_prunes_hopeless_trials(make_sweep):
    # No warm-up here, so a 2-epoch trial can be pruned after its first epoch.
    path, storage = make_sweep({"grid": {"optim.lr": [0.003, 1.0e-9], "seed": [0, 1, 2]}, "pruner": "median",
                                "prune_from_epoch": 1, "prune_after_trials": 2,
                                "overrides": {"train.epochs": 2, "data.synthetic_size": 1200, "optim.name": "adam",
                                              "optim.weight_decay": 0.0, "model.dropout": 0.0,
                                              "model.norm": "batch"}}, "p")
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    ts = trials(storage, "p")
    pruned = [t for t in ts if t.state.name == "PRUNED"]
    hopeless = [t for t in pruned if t.params["optim.lr"] == 1.0e-9]
    assert hopeless and all(max(t.intermediate_values) == 1 for t in hopeless)  # stopped after one of two epochs
    best = max(t.value for t in ts if t.state.name == "COMPLETE")
    assert all(t.intermediate_values[max(t.intermediate_values)] < best for t in pruned)


def test_pruner_warm_up_spares_early_epochs_and_early_trials(make_sweep):
    path, _ = make_sweep({"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}, "pruner": "median",
                          "prune_from_epoch": 3, "prune_after_trials": 2}, "wu")
    sw, _ = sweep.load_sweep(path)
    study = sweep.make_study(sw, "sqlite:///:memory:", seed=0)

    def hopeless_trial_pruned_at() -> int | None:
        trial = study.ask()
        for epoch in (1, 2, 3, 4):
            trial.report(0.0, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return epoch
        study.tell(trial, 0.0)
        return None

    def good_trial():
        trial = study.ask()
        for epoch in (1, 2, 3, 4):
            trial.report(0.9, epoch)
        study.tell(trial, 0.9)

    good_trial()
    assert hopeless_trial_pruned_at() is None  # one finished trial < prune_after_trials
    good_trial()
    assert hopeless_trial_pruned_at() == 3  # never on epochs 1-2, as soon as the warm-up is over
    bad, _ = make_sweep({"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}, "prune_from_epoch": 0},
                        "bad")
    with pytest.raises(sweep.ConfigError, match="prune_from_epoch"):
        sweep.load_sweep(bad)


def test_two_workers_share_one_study_and_a_dead_worker_is_reported(make_sweep, tmp_path, capsys):
    import signal
    import threading
    import time

    from optuna.trial import TrialState

    path, storage = make_sweep({"space": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5}},
                                "sampler": "random", "pruner": "none", "overrides": {"train.epochs": 3}}, "w")
    killed = []

    def kill_one_worker_mid_trial():  # kill -9 of one worker once its trial is training
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            try:
                for t in trials(storage, "w"):
                    if t.state == TrialState.RUNNING and t.intermediate_values and "owner" in t.user_attrs:
                        os.kill(int(t.user_attrs["owner"].rpartition(":")[2]), signal.SIGKILL)
                        killed.append(t.number)
                        break
            except Exception:  # the study is not created yet
                pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_trial)
    killer.start()
    status = sweep.main(["--config", path, "--storage", storage, "--trials", "4", "--workers", "2"])
    killer.join()
    assert killed, "no trial was caught training"
    err = capsys.readouterr().err
    assert status == 1 and "died" in err and f"trials [{killed[0]}]" in err, err
    ts = trials(storage, "w")
    assert ts[killed[0]].state == TrialState.FAIL and not [t for t in ts if t.state == TrialState.RUNNING]
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and len({t.user_attrs["run_dir"] for t in done}) == 2  # the other worker's share ran
    assert all(len(t.user_attrs["history"]) == 3 for t in done)  # each curve is kept in the study


def test_bad_space_key_fails_before_any_trial(make_sweep, capsys):
    path, storage = make_sweep({"space": {"optim.lrr": {"type": "float", "low": 0.01, "high": 0.1}}}, "b")
    assert sweep.main(["--config", path, "--storage", storage]) == 2
    assert "optim.lr" in capsys.readouterr().err
    path, storage = make_sweep({"grid": {"model.dropout": [0.0]}, "space": {"optim.lr": {"type": "int"}}}, "b2")
    assert sweep.main(["--config", path, "--storage", storage]) == 2


def test_shipped_sweep_files_validate():
    import glob

    ablations = sorted(os.path.basename(f)[:-5] for f in glob.glob("configs/ablations/*.yaml")
                       if "seed_comparisons" not in f and "modern_variants" not in f)
    # One per comparison the lab exists for: each varies what its name says, over seeds 0-2.
    varies = {"activation": "model.activation", "augmentation": "data", "dropout": "model.dropout",
              "head": "model.head", "init": "model.init", "normalisation": "model.norm", "optimizer": "optim",
              "pooling": "model.pool", "scheduler": "sched"}
    assert ablations == sorted(varies)
    best = to_dict(load_config("configs/cifar10_best.yaml"))
    for name, key in varies.items():
        sw, _ = sweep.load_sweep(f"configs/ablations/{name}.yaml")
        assert set(sw.grid) == {key, "seed"} and sw.grid["seed"] == [0, 1, 2], name
        # The preset itself is one arm, so every comparison is against the recipe it ablates.
        section, _, field = key.partition(".")
        here = best[section][field] if field else best[section]
        arms = sw.grid[key]
        assert any(arm == here if field else all(here[k] == v for k, v in arm.items()) for arm in arms), name
    # The seed's comparisons: the base and 12 one-change rows, each different, 2 seeds.
    sw, base = sweep.load_sweep("configs/ablations/seed_comparisons.yaml")
    variants = sw.grid["variant"]
    assert set(sw.grid) == {"variant", "seed"} and sw.grid["seed"] == [0, 1]
    assert variants[0] == {} and len(variants) == 13 and len({json.dumps(v, sort_keys=True) for v in variants}) == 13
    flat_best = {f"{s}.{k}": v for s, sec in best.items() if isinstance(sec, dict) for k, v in sec.items()}
    assert all(all(flat_best[k] != v for k, v in var.items()) for var in variants[1:])  # each a real change
    assert all(len({k.split(".")[0] for k in var}) == 1 for var in variants[1:])  # within one concern
    third, _ = sweep.load_sweep("configs/ablations/seed_comparisons_seed2.yaml")  # a third seed for some rows
    assert third.grid["seed"] == [2] and third.overrides == sw.overrides and third.base == sw.base
    assert third.grid["variant"][0] == {} and all(v in variants for v in third.grid["variant"])
    # At the seed's own budget: every screening row, plus no weight decay, no momentum and the paper's init
    # at the paper's lr; the full split, 20 epochs, the milestones at the recipe's fractions.
    full, _ = sweep.load_sweep("configs/ablations/seed_comparisons_full.yaml")
    assert list(full.grid) == ["seed", "variant"] and full.grid["seed"] == [0, 1] and len(full.grid["variant"]) >= 16
    assert full.base == sw.base and all(v in full.grid["variant"] for v in variants)
    assert {json.dumps(v, sort_keys=True) for v in full.grid["variant"] if v not in variants} == {
        json.dumps(v, sort_keys=True) for v in ({"optim.weight_decay": 0.0}, {"optim.momentum": 0.0},
                                                {"model.init": "paper", "optim.lr": 0.01})}
    cfg = sweep.trial_config(base, full, [], {"variant": {}, "seed": 0})
    assert (cfg.train.epochs, cfg.sched.milestones, cfg.data.subset) == (20, [10, 15], 0)
    third, _ = sweep.load_sweep("configs/ablations/seed_comparisons_full_seed2.yaml")  # its third seed
    assert third.grid["seed"] == [2] and third.overrides == full.overrides and third.base == full.base
    assert third.grid["variant"][0] == {} and all(v in full.grid["variant"] for v in third.grid["variant"])
    assert report.section_of("runs/sweeps/" + third.study) == report.FULL  # its records join the full section
    # Toward 90%: each row a real change from cifar10_modern, two seeds.
    mv, _ = sweep.load_sweep("configs/ablations/modern_variants.yaml")
    modern = flatten(to_dict(load_config("configs/cifar10_modern.yaml")))
    assert mv.grid["seed"] == [0, 1] and mv.grid["variant"][0] == {}
    assert all(any(modern[k] != v for k, v in var.items()) for var in mv.grid["variant"][1:])
    files = glob.glob("configs/ablations/*.yaml") + ["configs/sweep.yaml", "configs/sweep_quickstart.yaml"]
    for f in files:
        sw, base = sweep.load_sweep(f)
        sweep.validate_space(base, sw, [])


def test_importances_only_when_the_estimator_can_tell_parameters_apart():
    def study_of(n):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: t.suggest_float("lr", 0, 1) + 0.01 * t.suggest_float("wd", 0, 1), n_trials=n)
        return study

    sw = sweep.SweepConfig(sampler="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the estimator's own warning must not escape to the user
        few = sweep.results_table(study_of(19), sw)
        many = sweep.results_table(study_of(40), sw)
    assert "need at least 20 finished trials, have 19" in few and "## Parameter importances" not in few
    imp = dict(line[3:].split("`: ") for line in many.splitlines() if line.startswith("- `"))
    assert float(imp["lr"]) > float(imp["wd"])


def test_sweep_killed_mid_trial_heals_and_never_repeats_a_point(make_sweep):
    import signal
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    path, storage = make_sweep({"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
                                "sampler": "random", "pruner": "none", "overrides": {"train.epochs": 3}}, "k")
    proc = subprocess.Popen([sys.executable, "sweep.py", "--config", path, "--storage", storage, "--trials", "6"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = trials(storage, "k")
        except Exception:  # the study is not created yet
            seen = []
        # Killed once a trial is training (its first epoch reported), not while it appends to the journal:
        # a kill then leaves the journal's lock behind, which costs the restart a 5 s grace period.
        if any(t.state == TrialState.COMPLETE for t in seen) and seen[-1].state == TrialState.RUNNING \
                and seen[-1].intermediate_values:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    before = trials(storage, "k")
    done = {t.number: t.params for t in before if t.state == TrialState.COMPLETE}
    assert done and before[-1].state == TrialState.RUNNING
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "2"]) == 0
    after = trials(storage, "k")
    assert not [t for t in after if t.state == TrialState.RUNNING]
    assert after[before[-1].number].state == TrialState.FAIL  # the killed trial, healed
    assert {t.number: t.params for t in after if t.state == TrialState.COMPLETE if t.number in done} == done
    lrs = [t.params["optim.lr"] for t in after if "optim.lr" in t.params]
    assert len(lrs) == len(set(lrs)) and len(after) == len(before) + 2  # no point proposed twice


def test_a_grid_point_whose_process_died_is_run_again(make_sweep):
    import socket

    from optuna.trial import TrialState

    path, storage = make_sweep({"grid": {"model.dropout": [0.0, 0.5]}}, "g")
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "1"]) == 0
    study = optuna.load_study(study_name="g", storage=sweep.make_storage(storage))
    orphan = study.ask()  # takes the grid's other point, as a process that then died would have
    orphan.set_user_attr("owner", f"{socket.gethostname()}:999999999")
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    ts = trials(storage, "g")
    assert [t.state for t in ts].count(TrialState.FAIL) == 1 and not [t for t in ts if t.state == TrialState.RUNNING]
    assert sorted(t.params["model.dropout"] for t in ts if t.state == TrialState.COMPLETE) == [0.0, 0.5]


def test_trials_another_machine_left_running_are_healed_only_when_asked(make_sweep):
    from optuna.trial import TrialState

    path, storage = make_sweep({"grid": {"model.dropout": [0.0, 0.5]}}, "h")
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "1"]) == 0
    study = optuna.load_study(study_name="h", storage=sweep.make_storage(storage))
    orphan = study.ask()  # the other grid point, taken by a machine that is gone (a study carried in git)
    orphan.set_user_attr("owner", "some-other-machine:1234")
    assert sweep.main(["--config", path, "--storage", storage]) == 0
    assert [t.state for t in trials(storage, "h")].count(TrialState.RUNNING) == 1  # could still be running
    assert sweep.main(["--config", path, "--storage", storage, "--heal-other-hosts"]) == 0
    ts = trials(storage, "h")
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert sorted(t.params["model.dropout"] for t in ts if t.state == TrialState.COMPLETE) == [0.0, 0.5]


def test_a_grid_resumed_with_another_seed_runs_each_missing_point_once(make_sweep):
    """Grid points are keyed by their values: Optuna's GridSampler keyed them by a shuffle that moved with
    the sampler seed, so a resumed grid repeated finished points and skipped others (the seed-comparison
    grid ran 4 points twice). A waiting trial queued by grid id alone (the old requeue) is failed, not run."""
    from optuna.trial import TrialState

    path, storage = make_sweep({"grid": {"model.dropout": [0.0, 0.25, 0.5], "seed": [0, 1]}, "pruner": "none"}, "r")
    assert sweep.main(["--config", path, "--storage", storage, "--trials", "2", "--seed", "0"]) == 0
    study = optuna.load_study(study_name="r", storage=sweep.make_storage(storage))
    for t in study.get_trials(states=(TrialState.WAITING,)):  # an old invocation's leftovers: forget them
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"grid_id": 0}))
    assert sweep.main(["--config", path, "--storage", storage, "--seed", "7"]) == 0
    ts = trials(storage, "r")
    done = sorted((t.params["model.dropout"], t.params["seed"]) for t in ts if t.state == TrialState.COMPLETE)
    assert done == [(d, s) for d in (0.0, 0.25, 0.5) for s in (0, 1)]  # every point, none twice
    assert "grid id" in [t for t in ts if not t.params and t.state == TrialState.FAIL][-1].user_attrs["fail_reason"]
    assert sweep.main(["--config", path, "--storage", storage, "--seed", "3"]) == 0
    assert len(trials(storage, "r")) == len(ts)  # a finished grid runs nothing again
    grown, _ = make_sweep({"grid": {"model.dropout": [0.0, 0.25, 0.5], "seed": [0, 1, 2]}, "pruner": "none"}, "r")
    assert sweep.main(["--config", grown, "--storage", storage]) == 2  # one line: a new study, not a traceback
    assert len(trials(storage, "r")) == len(ts)
    # The same study name in other storage numbers its trials from 0 again: its runs go beside, not into, ours.
    sweep_dir = os.path.dirname(ts[0].user_attrs["run_dir"])
    before = open(os.path.join(sweep_dir, "trial-0000", "metrics.jsonl")).read()
    assert sweep.main(["--config", path, "--storage", storage + ".other", "--trials", "1"]) == 0
    assert os.path.isfile(os.path.join(sweep_dir, "trial-0000-2", "last.pt"))
    assert open(os.path.join(sweep_dir, "trial-0000", "metrics.jsonl")).read() == before
