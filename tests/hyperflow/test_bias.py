import pytest
import torch

from hyperflow.bias import BiasLayout, get_theta, select_biases, set_theta
from hyperflow.errors import UserError


def test_default_selects_every_bias(tiny_model):
    layout = tiny_model.layout
    names = [n for n, _ in tiny_model.backbone.named_parameters() if n.endswith(".bias")]
    assert layout.names == names
    assert layout.size == sum(
        p.numel() for n, p in tiny_model.backbone.named_parameters() if n.endswith(".bias")
    )
    offsets = [e.offset for e in layout.entries]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_include_exclude_patterns(tiny_model):
    only_l1 = select_biases(tiny_model.backbone, ["layer1.*.bias"])
    assert only_l1.names and all(n.startswith("layer1.") for n in only_l1.names)
    no_l1 = select_biases(tiny_model.backbone, None, ["layer1.*"])
    assert not set(only_l1.names) & set(no_l1.names)
    assert only_l1.size + no_l1.size == tiny_model.layout.size


def test_pattern_matching_nothing_is_a_clear_error(tiny_model):
    with pytest.raises(UserError, match="qkv"):
        select_biases(tiny_model.backbone, ["*.qkv.bias"])


def test_theta_round_trip_and_split(tiny_model):
    layout = tiny_model.layout
    theta = get_theta(tiny_model.backbone, layout)
    parts = layout.split(theta)
    for e in layout.entries:
        assert parts[e.name].shape == e.shape
    changed = theta + 1.0
    set_theta(tiny_model.backbone, layout, changed)
    assert torch.equal(get_theta(tiny_model.backbone, layout), changed)
    set_theta(tiny_model.backbone, layout, theta)
    assert layout.layer_index().shape == (layout.size,)


def test_layout_hash_and_json(tiny_model):
    layout = tiny_model.layout
    again = BiasLayout.from_json(layout.to_json())
    assert again == layout and again.hash() == layout.hash()
    other = select_biases(tiny_model.backbone, ["layer1.*.bias"])
    assert other.hash() != layout.hash()
