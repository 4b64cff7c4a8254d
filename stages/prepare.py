"""DVC stage `prepare`: normalized train / val / test tensors, the data summary, an example grid."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

from digitlab.data import load_split, prepare
from digitlab.files import write_json
from digitlab.plots import class_rows, save_grid
from digitlab.readers import read_verified
from digitlab.stopping import run_main
from digitlab.tracking import stage_run

PREPARED = Path("data/prepared")
REPORTS = Path("reports/data")


def main() -> None:
    data = PARAMS.data
    with stage_run("prepare", PARAMS, {"data": data.model_dump(), "seed": PARAMS.seed}) as run:
        train, test = read_verified(Path("data/raw") / data.dataset, data.dataset)
        summary = prepare(data.dataset, train, test, PREPARED, data.val_size, PARAMS.seed)
        write_json(REPORTS / "summary.json", summary)
        save_grid(class_rows(load_split(PREPARED, "train")), REPORTS / "examples.png", nrow=10)
        run.log_metrics(summary)
        run.log_artifacts([REPORTS / "summary.json", REPORTS / "examples.png"], "data")


if __name__ == "__main__":
    run_main(main)
