"""How long should the median pruner wait? Prints one JSON line a figure.

The default study prunes with Optuna's ``MedianPruner``, which judges a trial from epoch
``n_warmup_steps`` on. Under 1-Cycle the LR still climbs for the first 30% of the epochs,
and the trials with the high peaks that train best look worst while it climbs. This runs
the default study's search (``studies/california.toml``) without pruning, a 2-worker study
per seed, then replays Optuna's own ``MedianPruner`` over each study's learning curves,
trial by trial in the order they started, for several warm-ups. For each warm-up:

- ``epochs_share``: the epochs trained with pruning, as a share of the unpruned epochs;
- ``best_kept``: whether the unpruned study's best trial survives;
- ``top5_kept``: how many of the unpruned top 5 survive;
- ``best_val_mse``: the best validation MSE among the survivors.

A replay is sequential, so it sees every earlier trial finished; with 2 workers the pruner
sees the other worker's running trial only up to its last report. Run from the project root:
``python benchmarks/pruning.py`` (about 10 minutes on 2 cores); ``--quick`` only checks that
the script works.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from benchmark_support import ROOT, run_tuner
from optuna.trial import FrozenTrial, TrialState

DEFAULT_STUDY = ROOT / "studies" / "california.toml"
STARTUP_TRIALS = 5  # tuner.search.MEDIAN_STARTUP_TRIALS
WARMUPS = (3, 6, 9, 12)


def run_unpruned(folder: Path, seed: int, trials: int, epochs: int) -> list[FrozenTrial]:
    """Runs the default study's search with pruning off; returns its finished trials."""
    settings = tomllib.loads(DEFAULT_STUDY.read_text())
    name = f"unpruned_{seed}"
    url = f"sqlite:///{folder / (name + '.db')}"
    settings["study"].update(name=name, seed=seed, storage=url, n_trials=trials, pruner="none")
    settings["train"]["epochs"] = epochs
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(settings))
    run_tuner("run", str(path), "--workers", "2")
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def replay(trials: list[FrozenTrial], warmup: int) -> dict[str, Any]:
    """Optuna's median pruner over recorded curves, as if the study had used it."""
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=warmup)
    )
    survivors = []
    epochs = 0
    for recorded in sorted(trials, key=lambda t: t.number):
        trial = study.ask()
        pruned = False
        for step, value in sorted(recorded.intermediate_values.items()):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, recorded.value)
            survivors.append(recorded)
    ranked = sorted(trials, key=lambda t: t.value)
    kept = {t.number for t in survivors}
    return {
        "warmup": warmup,
        "epochs_share": round(epochs / sum(len(t.intermediate_values) for t in trials), 3),
        "survivors": len(survivors),
        "best_kept": ranked[0].number in kept,
        "top5_kept": sum(t.number in kept for t in ranked[:5]),
        "best_val_mse": round(min(t.value for t in survivors), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the script")
    parser.add_argument("--seeds", type=int, default=4, help="study seeds")
    parser.add_argument("--trials", type=int, default=50, help="trials per study")
    args = parser.parse_args()
    seeds, trials, epochs = (1, 8, 4) if args.quick else (args.seeds, args.trials, 30)
    warmups = (1, 2) if args.quick else WARMUPS
    replays: dict[int, list[dict[str, Any]]] = {w: [] for w in warmups}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            finished = run_unpruned(Path(tmp), seed, trials, epochs)
            print(json.dumps({
                "figure": "unpruned_study", "seed": seed, "complete": len(finished),
                "best_val_mse": round(min(t.value for t in finished), 4),
                "epochs": sum(len(t.intermediate_values) for t in finished),
            }), flush=True)  # fmt: skip
            for warmup in warmups:
                result = replay(finished, warmup)
                replays[warmup].append(result)
                print(json.dumps({"figure": "pruning_replay", "seed": seed, **result}), flush=True)
    for warmup, results in replays.items():
        print(json.dumps({
            "figure": "pruning_summary", "warmup": warmup, "seeds": len(results),
            "median_epochs_share": round(statistics.median(r["epochs_share"] for r in results), 3),
            "best_kept": sum(r["best_kept"] for r in results),
            "top5_kept": sum(r["top5_kept"] for r in results),
            "median_best_val_mse": statistics.median(r["best_val_mse"] for r in results),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
