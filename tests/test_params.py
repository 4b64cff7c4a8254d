"""params.yaml validation: the repo's file loads; each bad value fails with one line naming the key."""

import time
from pathlib import Path

import pytest
import torch
import yaml

from digitlab.memory import activations_per_image, check_networks
from digitlab.models import CLASSIFIERS, GANS, build_classifier, n_parameters
from digitlab.params import (
    Params,
    ParamsError,
    check_gan_params,
    input_shape,
    load_params,
    parse_params,
)
from helpers import alias_bomb, one_line_error, repo_params, set_key

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
        ({"classifier.arch": "cnn", "classifier.channels": [64, 32, 32], "classifier.batch_size": 10**9},
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
        check_networks(params, 24 * GIB)
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
        check_networks(Params.model_validate(raw), 4 * GIB)


def layer_outputs(model: torch.nn.Module, image: torch.Tensor) -> list[int]:
    """The sizes of the input and of every layer's output in a real forward pass."""
    sizes = [image.numel()]
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out.numel())) for m in leaves]
    model.eval()(image)
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("head", ["classes", "regression"])
@pytest.mark.parametrize("arch", list(CLASSIFIERS))
def test_the_memory_check_counts_each_classifier_exactly(
    arch: str, head: str, dataset: str
) -> None:
    """Built on the meta device, a network has the parameters and layer outputs of the real
    one: counted on a real forward pass here."""
    shape = input_shape(dataset)
    for width in (1, 3):
        changes = {"arch": arch, "head": head, "loss": "mse", "width": width}
        cfg = repo_params(**{f"classifier.{k}": v for k, v in changes.items()}).classifier
        real = build_classifier(cfg.architecture(), shape)
        with torch.device("meta"):
            meta = build_classifier(cfg.architecture(), shape)
        assert n_parameters(meta) == n_parameters(real)
        image = torch.rand(1, *shape)
        with torch.device("meta"):
            counted = activations_per_image(meta, torch.zeros(1, *shape))
        assert counted == sum(layer_outputs(real, image))


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("arch", list(GANS))
def test_the_memory_check_builds_every_gan(arch: str, conditional: bool) -> None:
    params = repo_params(**{"gan.arch": arch, "gan.conditional": conditional, "digit": "all"})
    check_networks(params, 4 * GIB)
    huge = {"gan.arch": arch, "gan.channels": [1024, 1024], "gan.batch_size": 60_000,
            "gan.discriminator.hidden": [16_384, 16_384]}  # fmt: skip
    with pytest.raises(
        ParamsError, match=r"(makes the discriminator too big|gan.batch_size gives)"
    ):
        check_networks(repo_params(**huge), 4 * GIB)


@pytest.mark.parametrize(("key", "name", "allowed"), [("classifier.arch", "resnet", "mlp, cnn, lenet5, fastcnn"),
                                                      ("gan.arch", "stylegan", "mlp, conv")])  # fmt: skip
def test_a_network_no_registry_names_is_refused(key: str, name: str, allowed: str) -> None:
    params = parse_params(with_value(key, name))  # the schema leaves names to the registries
    message = one_line_error(check_networks, params)
    assert message == (f"params.yaml: {key} = {name!r} is not allowed: must be one of {allowed} "
                       "(the networks of digitlab.models)")  # fmt: skip


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_value_that_is_not_a_number_says_so(value: float) -> None:
    message = error_for(with_value("classifier.optimizer.lr", value))
    expected = "not a number" if value != value else "infinite"
    assert message == (f"params.yaml: classifier.optimizer.lr = {value!r} is not allowed: {expected} "
                       "(a finite number is needed)")  # fmt: skip


def test_a_yaml_alias_bomb_is_refused_in_one_short_line_at_once(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("    hidden: mirror ", f"    hidden: {alias_bomb()} "))
    assert path.read_text() != text
    start = time.perf_counter()
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert time.perf_counter() - start < 10
    message = str(info.value).removeprefix(f"{path}: ")
    assert message.startswith("gan.generator.hidden = [[1, 1, 1, 1, ...], [[...], ")
    assert len(message) < 250


def test_params_accept_cifar10_and_bound_its_validation_split() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["dataset"] = "cifar10"
    assert parse_params(raw).data.dataset == "cifar10"
    raw["data"]["val_size"] = 45_000
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert str(info.value) == (
        "params.yaml: data.val_size = 45000 is not allowed: cifar10 has 50,000 training images; "
        "at most 40,000 for validation leaves 10,000 to train on"
    )


def test_check_gan_params_refuses_cifar10_only() -> None:
    for dataset in ("mnist", "fashion_mnist"):
        check_gan_params(repo_params(**{"data.dataset": dataset}))
    message = one_line_error(check_gan_params, repo_params(**{"data.dataset": "cifar10"}))
    assert message == (
        "data.dataset is cifar10: the GAN makes 1×28×28 images; set data.dataset to mnist or "
        "fashion_mnist (or run only the classifier stages: dvc repro evaluate)"
    )


def test_evaluate_gan_refuses_a_judge_without_probabilities() -> None:
    params = repo_params(**{"classifier.head": "regression", "classifier.loss": "mse"})
    check_gan_params(params)  # training the GAN needs no judge
    message = one_line_error(check_gan_params, params, True)
    assert message.startswith("evaluate_gan judges images by the classifier's ten probabilities")
