import pytest

from hyperflow.config import load_config
from hyperflow.errors import UserError


def test_quickstart_loads_with_overrides():
    cfg = load_config("quickstart", ["pretrain.epochs=3", "collect.shifts=[noise]"])
    assert cfg.pretrain.epochs == 3
    assert cfg.collect.shifts == ["noise"]
    assert cfg.target.backbone


@pytest.mark.parametrize(
    "override, needle",
    [
        ("pretrain.epoch=3", "pretrain.epoch"),
        ("nosection.x=1", "nosection"),
        ("pretrain.epochs=abc", "pretrain.epochs"),
        ("pretrain", "pretrain"),
    ],
)
def test_bad_keys_are_named(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config("quickstart", [override])


def test_unknown_config_name():
    with pytest.raises(UserError, match="no_such_config"):
        load_config("no_such_config")


def test_yaml_file_with_bad_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  sizee: small\n")
    with pytest.raises(UserError, match="train.sizee"):
        load_config(str(path))
