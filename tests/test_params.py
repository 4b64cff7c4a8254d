"""params.yaml validation: the repo's file loads; each bad value fails with one line naming the key."""

from pathlib import Path

import pytest
import yaml

from digitlab.params import ParamsError, load_params, parse_params
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
        ("data.dataset", "cifar100", "'mnist' or 'fashion_mnist'"),
        ("data.val_size", -5, "greater than or equal to 10"),
        ("data.val_size", "5000", "valid integer"),
        ("data.val_size", 5000.5, "valid integer"),
        ("digit", 10, "0-9 or 'all'"),
        ("digit", "seven", "0-9 or 'all'"),
        ("digit", True, "0-9 or 'all'"),
        ("seed", -1, "greater than or equal to 0"),
    ],
)
def test_bad_value_names_key_and_allowed(key: str, value: object, expected: str) -> None:
    message = error_for(with_value(key, value))
    assert f"params.yaml: {key} = {value!r} is not allowed" in message
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
