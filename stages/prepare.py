"""DVC stage `prepare`: normalized train / val / test tensors, the data summary, an example grid."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow

from digitlab.data import load_split, prepare
from digitlab.errors import run_main
from digitlab.files import write_json
from digitlab.plots import class_rows, save_grid
from digitlab.tracking import flatten, stage_run

PREPARED = Path("data/prepared")
REPORTS = Path("reports/data")


def main() -> None:
    params = PARAMS
    data = params.data
    with stage_run("prepare", params, {"data": data.model_dump(), "seed": params.seed}):
        summary = prepare(
            Path("data/raw") / data.dataset, PREPARED, data.dataset, data.val_size, params.seed
        )
        write_json(REPORTS / "summary.json", summary)
        save_grid(class_rows(load_split(PREPARED, "train")), REPORTS / "examples.png", nrow=10)
        numbers = {k: v for k, v in flatten(summary, sep="/").items() if not isinstance(v, str)}
        mlflow.log_metrics(numbers)
        mlflow.log_artifact(str(REPORTS / "summary.json"), "data")
        mlflow.log_artifact(str(REPORTS / "examples.png"), "data")


if __name__ == "__main__":
    run_main(main)
