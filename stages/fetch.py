"""DVC stage `fetch`: the four raw IDX files of `data.dataset`, sha256-verified, in data/raw/<dataset>/."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow

from digitlab.data import SHA256, fetch_raw
from digitlab.errors import run_main
from digitlab.tracking import stage_run


def main() -> None:
    params = PARAMS
    dataset = params.data.dataset
    with stage_run("fetch", params, {"data.dataset": dataset}):
        source = fetch_raw(dataset, Path("data/raw") / dataset)
        mlflow.set_tags(
            {"fetch.source": source, **{f"sha256.{k}": v for k, v in SHA256[dataset].items()}}
        )


if __name__ == "__main__":
    run_main(main)
