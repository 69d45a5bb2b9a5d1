import json

import pytest
import torch
from safetensors.torch import load_file

from hyperflow.drift import (
    DriftConfig,
    DriftNet,
    load_drift,
    read_drift_meta,
    save_drift,
    timm_encoder,
)
from hyperflow.errors import UserError

H = 5.0


def trained_looking_net(layout, encoder, feature_dim, cfg: DriftConfig) -> DriftNet:
    torch.manual_seed(0)
    net = DriftNet(layout, cfg, encoder, feature_dim, H)
    with torch.no_grad():  # non-default normalisers and weights must survive the round trip
        net.fit_normalizer(torch.randn(50, layout.size) * 0.1, torch.randn(50, layout.size) + 2)
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def test_round_trip_with_the_target_encoder(tmp_path, layout, encoder, support_factory):
    cfg = DriftConfig(
        size="small", encoder="target", interpolant="piecewise_linear", site_stats=False
    )
    net = trained_looking_net(layout, encoder, encoder.feature_dim, cfg)
    save_drift(net, tmp_path / "d", extra={"store": "s3://x", "epochs": 3})

    meta = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert meta["layout_hash"] == layout.hash() and meta["layout"] == layout.to_json()
    assert meta["interpolant"] == "piecewise_linear" and meta["horizon"] == H
    # saved resolved: the preset's dimensions are written out (tests/.../test_drift_sizes.py)
    assert DriftConfig(**meta["config"]) == cfg.resolved()
    assert meta["extra"] == {"store": "s3://x", "epochs": 3}
    weights = load_file(str(tmp_path / "d" / "drift.safetensors"))
    assert not any(k.startswith("encoder.") for k in weights), "target weights are not ours"
    assert "velocity_scale" in weights and "theta_offset" in weights

    loaded = load_drift(tmp_path / "d", encoder, encoder.feature_dim, layout.hash()).eval()
    _assert_same_outputs(net, loaded, support_factory, layout)


def test_round_trip_saves_a_trained_timm_encoder(tmp_path, layout, support_factory):
    encoder, dim = timm_encoder("test_resnet", in_chans=1)
    net = trained_looking_net(
        layout, encoder, dim, DriftConfig(encoder="test_resnet", site_stats=False)
    )
    save_drift(net, tmp_path)
    weights = load_file(str(tmp_path / "drift.safetensors"))
    assert any(k.startswith("encoder.") for k in weights)
    fresh, _ = timm_encoder("test_resnet", in_chans=1)
    loaded = load_drift(tmp_path, fresh, dim).eval()
    x, y = support_factory(2, [2, 2], 1)
    x = torch.nn.functional.interpolate(x, size=32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_tasks([(x, y)]).embedding, net.encode_tasks([(x, y)]).embedding
        )


def test_refuses_another_layout(tmp_path, layout, layout_factory, encoder):
    net = trained_looking_net(layout, encoder, encoder.feature_dim, DriftConfig(site_stats=False))
    save_drift(net, tmp_path)
    other = layout_factory([(8,), (16,)]).hash()
    with pytest.raises(UserError) as info:
        load_drift(tmp_path, encoder, encoder.feature_dim, expected_layout_hash=other)
    assert layout.hash() in str(info.value) and other in str(info.value)


def test_refuses_tampered_or_missing_checkpoints(tmp_path, layout, encoder):
    with pytest.raises(UserError, match="drift.json"):
        load_drift(tmp_path / "nowhere", encoder, encoder.feature_dim)
    save_drift(
        trained_looking_net(layout, encoder, encoder.feature_dim, DriftConfig(site_stats=False)),
        tmp_path,
    )
    with pytest.raises(UserError, match="feature_dim=7"):
        load_drift(tmp_path, encoder, 7)
    meta = json.loads((tmp_path / "drift.json").read_text())
    meta["layout"][0]["shape"] = [9]
    (tmp_path / "drift.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="inconsistent"):
        load_drift(tmp_path, encoder, encoder.feature_dim)


def test_round_trip_on_s3(s3, layout, encoder, support_factory):
    net = trained_looking_net(layout, encoder, encoder.feature_dim, DriftConfig(site_stats=False))
    url = s3["url"] + "/drift/linear"
    save_drift(net, url, extra={"epochs": 3})
    assert read_drift_meta(url)["extra"] == {"epochs": 3}
    loaded = load_drift(url, encoder, encoder.feature_dim, layout.hash()).eval()
    _assert_same_outputs(net, loaded, support_factory, layout)
    with pytest.raises(UserError, match=f"{s3['url']}/drift/nowhere"):
        load_drift(s3["url"] + "/drift/nowhere", encoder, encoder.feature_dim)


def _assert_same_outputs(net, loaded, support_factory, layout) -> None:
    supports = [support_factory(3, [1, 2, 3], 0)]
    theta, t = torch.randn(1, layout.size), torch.tensor([1.25])
    with torch.no_grad():
        expected = net(theta, t, net.encode_tasks(supports))
        got = loaded(theta, t, loaded.encode_tasks(supports))
    assert torch.equal(got, expected)
