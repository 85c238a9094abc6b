"""Issue 7: does an LR range test inside every trial pay? Prints one JSON line a figure.

Four searches on California housing, each a 2-worker study with the same number of trials,
repeated over several study seeds:

- ``absolute``: the notebook's search, the 1-Cycle peak LR sampled in 1e-4..1e-1 (log).
- ``lr_finder``: each trial runs a range test on its own model and batch size and samples
  the peak LR as a factor 0.3..3 (log) of the test's suggestion (the notebook's min / 10).
- ``lr_finder_valley``: the same with fastai's valley rule.
- ``lr_finder_wide``: min / 10 again, with the factor sampled in 1..30 (log), i.e. around
  the LR of the lowest loss.

The other parameters and the training are the same. For each run: the best validation MSE,
the test MSE of the final model that ``tuner train-best`` trains from the best trial, and
the median trial time; then the medians over seeds. Run from the project root:
``python benchmarks/lr_finder.py`` (about 25 minutes on 2 cores); ``--quick`` only checks
that the script works.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from benchmark_support import run_tuner
from optuna.trial import TrialState

COMMON_SPACE = {
    "n_hidden": {"low": 1, "high": 5},
    "n_neurons": {"low": 32, "high": 512, "log": True},
    "batch_size": {"choices": [16, 32, 64, 128, 256]},
    "activation": {"choices": ["relu", "tanh", "elu"]},
}
SEARCHES: dict[str, dict[str, Any]] = {
    "absolute": {
        "train": {"lr_finder": False},
        "space": {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, **COMMON_SPACE},
    },
    "lr_finder": {
        "train": {"lr_finder": True},
        "space": {"lr_factor": {"low": 0.3, "high": 3.0, "log": True}, **COMMON_SPACE},
    },
    "lr_finder_valley": {
        "train": {"lr_finder": True, "lr_suggestion": "valley"},
        "space": {"lr_factor": {"low": 0.3, "high": 3.0, "log": True}, **COMMON_SPACE},
    },
    # The first runs found the best peaks an order of magnitude above the min / 10
    # suggestion, out of the 0.3..3 range's reach: this one samples around the LR of the
    # lowest loss instead.
    "lr_finder_wide": {
        "train": {"lr_finder": True},
        "space": {"lr_factor": {"low": 1.0, "high": 30.0, "log": True}, **COMMON_SPACE},
    },
}


def run_search(folder: Path, search: str, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    name = f"{search}_{seed}"
    path = folder / f"{name}.toml"
    url = f"sqlite:///{folder / (name + '.db')}"
    path.write_text(
        tomli_w.dumps({
            "study": {"name": name, "n_trials": trials, "seed": seed, "storage": url,
                      "sampler": "random", "pruner": "median"},
            "train": {"epochs": epochs, "schedule": "one_cycle", **SEARCHES[search]["train"]},
            "space": SEARCHES[search]["space"],
        })
    )  # fmt: skip
    run_tuner("run", str(path), "--workers", "2")
    run_tuner("train-best", str(path), "--output", str(folder / f"{name}.keras"))
    study = optuna.load_study(study_name=name, storage=url)
    done = study.get_trials(deepcopy=False)
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in done
        if t.datetime_complete and t.datetime_start
    ]
    final = study.user_attrs["final_model"]
    best = study.best_trial
    result = {
        "search": search,
        "seed": seed,
        "trials": len(done),
        "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in done),
        "best_val_mse": round(study.best_value, 4),
        "final_test_mse": round(final["test_mse"], 4),
        "median_trial_seconds": round(statistics.median(durations), 2),
        # The peak LR the best trial trained with, to see where each search lands.
        "best_peak_lr": best.user_attrs.get("lr_used", best.params.get("learning_rate")),
        "best_params": best.params,
    }
    tested = [t for t in done if "lr_suggestion" in t.user_attrs]
    if tested:
        result["median_lr_suggestion"] = statistics.median(
            t.user_attrs["lr_suggestion"] for t in tested
        )
        # How far apart the suggestion rules land on the same curve, in decades.
        result["median_rule_spread_decades"] = round(
            statistics.median(t.user_attrs["lr_spread_decades"] for t in tested), 2
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the script")
    parser.add_argument("--seeds", type=int, default=3, help="study seeds per search")
    parser.add_argument("--trials", type=int, default=24, help="trials per study")
    parser.add_argument(
        "--searches", nargs="+", choices=tuple(SEARCHES), default=tuple(SEARCHES),
        help="which searches to run (default: all)",
    )  # fmt: skip
    args = parser.parse_args()
    seeds, trials, epochs = (1, 2, 2) if args.quick else (args.seeds, args.trials, 30)
    runs: dict[str, list[dict[str, Any]]] = {search: [] for search in args.searches}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for search in args.searches:  # interleaved, so drift in machine load hits both
                result = run_search(Path(tmp), search, seed, trials, epochs)
                runs[search].append(result)
                print(json.dumps({"figure": "lr_finder_run", **result}), flush=True)
    for search, results in runs.items():
        print(json.dumps({
            "figure": "lr_finder_summary", "search": search, "seeds": len(results),
            "trials_per_study": trials, "epochs": epochs,
            "median_best_val_mse": statistics.median(r["best_val_mse"] for r in results),
            "median_final_test_mse": statistics.median(r["final_test_mse"] for r in results),
            "median_trial_seconds": statistics.median(r["median_trial_seconds"] for r in results),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
