"""DVC stage `fetch`: the raw files of `data.dataset` (4 IDX files, CIFAR-10's 7 python-version
batches), checksum-verified, in data/raw/<dataset>/."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

from digitlab.raw import checksums, fetch_raw
from digitlab.stopping import run_main
from digitlab.tracking import stage_run


def main() -> None:
    dataset = PARAMS.data.dataset
    with stage_run("fetch", PARAMS, {"data.dataset": dataset}) as run:
        source = fetch_raw(dataset, Path("data/raw") / dataset)
        algorithm, digests = checksums(dataset)
        run.set_tags(
            {"fetch.source": source, **{f"{algorithm}.{k}": v for k, v in digests.items()}}
        )


if __name__ == "__main__":
    run_main(main)
