"""What a stage checks before any work: params.yaml valid, the device there, every network it
names known and small enough for this machine. A layer above params.py (which validates its
own data only), so that the schema never imports torch or the networks."""

from __future__ import annotations

from digitlab.memory import check_device, check_networks
from digitlab.params import Params, ParamsError, load_params
from digitlab.stopping import fail


def stage_params() -> Params:
    """params.yaml for a stage script, read before anything else it imports (MLflow takes
    seconds to import): a bad value, a device this machine lacks, an unknown network or one too
    big for this machine ends the stage at once, with one line and exit 1."""
    try:
        params = load_params()
        check_device(params)
        check_networks(params)
        return params
    except ParamsError as exc:
        fail(str(exc))
