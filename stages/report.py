"""DVC stage `report`: reports/index.html, one self-contained page of the pipeline's results."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from dataclasses import replace
from pathlib import Path

from digitlab.files import atomic_path, write_text
from digitlab.report import build_report, latest_stage_runs, progress_gif
from digitlab.stopping import run_main
from digitlab.store import PIPELINE_TAG, experiment_name
from digitlab.tracking import stage_run

GIF = Path("reports/gan/progress.gif")
PAGE = Path("reports/index.html")


def main() -> None:
    with stage_run("report", PARAMS, {}) as run:
        frames = sorted(Path("reports/gan/progress").glob("step_*.png"))
        with atomic_path(GIF) as tmp:
            progress_gif(frames, tmp)
        runs = replace(
            latest_stage_runs(run.data.tags[PIPELINE_TAG], experiment_name()),
            experiment_id=run.info.experiment_id,
            report=run.info.run_id,
            pipeline=run.data.tags.get("mlflow.parentRunId"),
        )
        write_text(PAGE, build_report(Path("."), runs, GIF))
        run.log_artifacts([PAGE], "report")
        print(f"report: {PAGE} ({PAGE.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    run_main(main)
