"""DVC stage `fetch`: the raw files of `data.dataset` (4 IDX files, CIFAR-10's 7 python-version
batches), checksum-verified, in data/raw/<dataset>/."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow

from digitlab.data import checksums, fetch_raw
from digitlab.errors import run_main
from digitlab.tracking import stage_run


def main() -> None:
    params = PARAMS
    dataset = params.data.dataset
    with stage_run("fetch", params, {"data.dataset": dataset}):
        source = fetch_raw(dataset, Path("data/raw") / dataset)
        algorithm, digests = checksums(dataset)
        mlflow.set_tags(
            {"fetch.source": source, **{f"{algorithm}.{k}": v for k, v in digests.items()}}
        )


if __name__ == "__main__":
    run_main(main)
