"""Drift networks of any size: explicit dimensions over a preset, the network they build, and a
drift.json that rebuilds the same architecture (also one written before dimensions were keys)."""

import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

from hyperflow.config import load_config
from hyperflow.drift import DRIFT_SIZES, DriftConfig, DriftNet, drift_config, load_drift, save_drift
from hyperflow.errors import UserError

H = 5.0
F = 16


def _net(layout, encoder, **dims) -> DriftNet:
    torch.manual_seed(0)
    return DriftNet(layout, DriftConfig(site_stats=False, **dims), encoder, encoder.feature_dim, H)


def test_explicit_dimensions_build_the_asked_network(layout, encoder):
    net = _net(layout, encoder, layer_dim=24, width=96, depth=5, task_dim=40, time_dim=12)
    assert net.layer_embed.shape == (len(layout.entries), 24)
    assert net.stem.out_features == 96 and len(net.blocks) == 5
    assert net.task_dim == 40 and net.pool.rho[-1].out_features == 40
    assert net.freqs.numel() == 6  # sin and cos of 6 frequencies: 12 time features
    assert net.cond[0].in_features == 40 + 12
    # keys left null take the preset's values; the resolved config names every dimension
    partial = _net(layout, encoder, size="base", depth=1)
    assert asdict(partial.cfg.dims()) == {**asdict(DRIFT_SIZES["base"]), "depth": 1}
    # a preset's own values given explicitly build the same network as the preset
    same = _net(layout, encoder, size="small", **asdict(DRIFT_SIZES["base"]))
    assert same.num_parameters() == _net(layout, encoder, size="base").num_parameters()


def test_parameter_count_follows_width_and_depth(layout):
    # the trunk is ~depth (6 w^2 + 2 d w): doubling the width of a deep trunk ~quadruples it
    def count(**dims) -> int:
        return DriftNet(layout, DriftConfig(site_stats=False, **dims), nn.Identity(), F, H)

    small, wide = count(width=256, depth=8), count(width=512, depth=8)
    deeper = count(width=256, depth=16)
    assert 3.5 < wide.num_parameters() / small.num_parameters() < 4.1
    blocks = sum(p.numel() for p in small.blocks.parameters())
    assert deeper.num_parameters() - small.num_parameters() == blocks  # 8 more blocks, same size
    # frozen target encoder weights are never counted (nor saved)
    assert small.num_parameters() == sum(p.numel() for p in small.parameters())


def test_train_keys_reach_the_drift_config(tmp_path):
    cfg = load_config("tiny", ["train.size=base", "train.width=320", "train.depth=null"])
    dims = drift_config(cfg.train, "linear").resolved()
    assert (dims.layer_dim, dims.width, dims.depth) == (64, 320, 3)
    with pytest.raises(UserError, match="'train.width' expects int"):
        load_config("tiny", ["train.width=wide"])


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("width", 0, "'train.width' must be >= 1, got 0"),
        ("depth", -2, "'train.depth' must be >= 1, got -2"),
        ("layer_dim", True, "'train.layer_dim' expects int, got True"),
        ("time_dim", 7, "'train.time_dim' must be even"),
    ],
)
def test_bad_dimensions_are_refused_naming_the_key(layout, key, value, needle):
    with pytest.raises(UserError, match=needle):
        DriftNet(layout, DriftConfig(**{key: value}), nn.Identity(), F, H)


def test_custom_size_round_trips_through_drift_json(tmp_path, layout, encoder, support_factory):
    net = _net(layout, encoder, size="base", width=80, depth=1, time_dim=6).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_drift(net, tmp_path)
    meta = json.loads((tmp_path / "drift.json").read_text())
    assert meta["params"] == net.num_parameters()
    assert {k: meta["config"][k] for k in ("layer_dim", "width", "depth", "time_dim")} == {
        "layer_dim": 64,
        "width": 80,
        "depth": 1,
        "time_dim": 6,
    }
    loaded = load_drift(tmp_path, encoder, encoder.feature_dim).eval()
    assert loaded.cfg == net.cfg and loaded.num_parameters() == net.num_parameters()
    supports = [support_factory(3, [1, 2, 3], 0)]
    theta, t = torch.randn(1, layout.size), torch.tensor([1.5])
    with torch.no_grad():
        assert torch.equal(
            loaded(theta, t, loaded.encode_tasks(supports)),
            net(theta, t, net.encode_tasks(supports)),
        )


def test_drift_json_without_dimensions_is_its_preset(tmp_path, layout, encoder):
    # drift.json written before the dimensions were keys: {"size": "base", ...} only
    net = _net(layout, encoder, size="base")
    save_drift(net, tmp_path)
    meta = json.loads((tmp_path / "drift.json").read_text())
    for key in ("layer_dim", "width", "depth", "task_dim", "time_dim"):
        del meta["config"][key]
    del meta["params"]
    (tmp_path / "drift.json").write_text(json.dumps(meta))
    loaded = load_drift(tmp_path, encoder, encoder.feature_dim)
    assert loaded.cfg.dims() == DRIFT_SIZES["base"]
