"""params.yaml validation: the repo's file loads; each bad value fails with one line naming the key."""

from pathlib import Path

import pytest
import yaml

from digitlab.params import Params, ParamsError, check_sizes, load_params, parse_params
from helpers import set_key

ROOT = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(key: str, value: object) -> dict:
    raw = raw_params()
    set_key(raw, key, value)
    return raw


def error_for(raw: object) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_repo_params_load() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.data.dataset == "mnist"
    assert params.data.val_size == 5000
    assert params.digits == [params.digit]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data.dataset", "cifar100", "'mnist', 'fashion_mnist' or 'cifar10'"),
        ("data.val_size", -5, "greater than or equal to 10"),
        ("data.val_size", "5000", "valid integer"),
        ("data.val_size", 5000.5, "valid integer"),
        ("digit", 10, "0-9 or 'all'"),
        ("digit", "seven", "0-9 or 'all'"),
        ("digit", True, "0-9 or 'all'"),
        ("seed", -1, "greater than or equal to 0"),
        ("classifier.optimizer.weight_decay", float("inf"), "finite number"),
        ("classifier.augment.rotate", -5, "greater than or equal to 0"),
        ("classifier.augment.scale", 1, "less than 1"),
        ("classifier.augment.shift", "2", "valid number"),
        ("gan.optimizer_g.betas", [0.5], "at least 2 items"),
        ("gan.conditional", "yes", "valid boolean"),
        ("gan.generator.hidden", [10_000_000], "a list of sizes 1-65536"),
    ],
)
def test_bad_value_names_key_and_allowed(key: str, value: object, expected: str) -> None:
    message = error_for(with_value(key, value))
    assert message.startswith(f"params.yaml: {key} = {value!r} is not allowed")
    assert expected in message


def test_digit_all_is_allowed() -> None:
    params = parse_params(with_value("digit", "all"))
    assert params.digits == list(range(10))


def test_unknown_key_lists_allowed_keys() -> None:
    raw = raw_params()
    raw["data"]["val_sise"] = 100
    message = error_for(raw)
    assert "unknown key 'data.val_sise'" in message
    assert "dataset, val_size" in message


def test_missing_key() -> None:
    raw = raw_params()
    del raw["data"]["val_size"]
    assert error_for(raw) == "params.yaml: missing key 'data.val_size'"


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    assert "expected a mapping" in error_for([1, 2])
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_params_file_that_is_a_directory_or_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ParamsError, match=r"dir\.yaml: is a directory, expected the params file"):
        load_params(tmp_path / "dir.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"seed: \xff\n")
    with pytest.raises(ParamsError, match=r"latin\.yaml: not UTF-8 text"):
        load_params(tmp_path / "latin.yaml")


GIB = 1 << 30


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"classifier.arch": "mlp", "classifier.hidden": [65_536] * 3},
         "classifier.hidden makes the classifier too big: 8,642,166,794 parameters need 173 GB"),
        ({"gan.discriminator.hidden": [65_536, 65_536]},
         "gan.discriminator.hidden makes the discriminator too big"),
        ({"gan.generator.hidden": [60_000, 60_000]}, "gan.generator.hidden makes the generator too big"),
        ({"classifier.batch_size": 1_000_000_000},
         "classifier.batch_size gives batches of 55,000 images whose activations need"),
        ({"gan.batch_size": 65_536, "gan.discriminator.hidden": [16_384, 16_384]},
         "gan.batch_size gives batches of 60,000 images"),
    ],
)  # fmt: skip
def test_networks_and_batches_too_big_for_memory_are_refused(changes: dict, expected: str) -> None:
    raw = raw_params()
    for key, value in changes.items():
        set_key(raw, key, value)
    params = Params.model_validate(raw)  # each number is allowed on its own
    with pytest.raises(ParamsError) as info:
        check_sizes(params, 24 * GIB)
    message = str(info.value)
    assert message.startswith("params.yaml: ") and expected in message
    assert "of this machine's 26 GB of memory" in message and "\n" not in message


def test_the_defaults_and_the_labs_setups_fit_in_4_gib() -> None:
    for changes in ({}, {"classifier.arch": "mlp", "classifier.batch_size": 0},
                    {"classifier.arch": "lenet5"}, {"classifier.arch": "fastcnn"},
                    {"digit": "all"}):  # fmt: skip
        raw = raw_params()
        for key, value in changes.items():
            set_key(raw, key, value)
        check_sizes(Params.model_validate(raw), 4 * GIB)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("head", ["classes", "regression"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "lenet5", "fastcnn"])
def test_size_check_counts_each_classifiers_real_parameters(
    arch: str, head: str, dataset: str
) -> None:
    from digitlab.models import build_classifier, n_parameters
    from digitlab.params import _classifier_sizes, input_shape

    shape = input_shape(dataset)
    for width in (1, 3):
        raw = raw_params()
        changes = {"arch": arch, "head": head, "loss": "mse", "width": width}
        for key, value in changes.items():
            set_key(raw, f"classifier.{key}", value)
        cfg = Params.model_validate(raw).classifier
        _, weights, _ = _classifier_sizes(cfg, shape)
        assert weights == n_parameters(build_classifier(cfg.architecture(), shape))
