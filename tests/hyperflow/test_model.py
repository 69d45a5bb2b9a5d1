import pytest
import torch

from hyperflow.errors import UserError
from hyperflow.model import (
    TargetConfig,
    TargetModel,
    cosine_logits,
    load_target,
    prototypes,
    save_target,
    target_id,
)


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(UserError, match="no_such_net"):
        TargetModel(TargetConfig(backbone="no_such_net"))


def test_prototypes_are_class_means():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    assert torch.allclose(prototypes(feats, labels, 2), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    logits = cosine_logits(prototypes(feats, labels, 2), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(logits, torch.tensor([[1.0, 0.0]]))


def test_logits_shape_and_scale(tiny_model):
    x = torch.randint(0, 255, (10, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        f = tiny_model.features(tiny_model.preprocess(x))
        logits = tiny_model.logits(f[:6], torch.tensor([0, 0, 1, 1, 2, 2]), 3, f[6:])
    assert logits.shape == (4, 3)
    assert logits.abs().max() <= tiny_model.logit_scale.item() + 1e-4


def test_save_load_round_trip(tiny_model, tmp_path):
    save_target(tiny_model, tmp_path, {"note": "x"})
    again = load_target(tmp_path)
    x = tiny_model.preprocess(torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        assert torch.allclose(again.features(x), tiny_model.features(x))
    assert again.layout.hash() == tiny_model.layout.hash()


def test_load_missing_target_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="target.json"):
        load_target(tmp_path / "nope")


def test_target_round_trips_through_s3(tiny_model, tmp_path, s3):
    url = s3["url"] + "/runs/target"
    save_target(tiny_model, url, {"note": "x"})
    save_target(tiny_model, tmp_path / "local", {"note": "x"})
    again = load_target(url)
    want, got = tiny_model.state_dict(), again.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert again.layout.hash() == tiny_model.layout.hash()
    # the id names the weights, not where they are stored
    assert target_id(url) == target_id(tmp_path / "local")
    with pytest.raises(UserError, match=f"{s3['url']}/runs/nope"):
        load_target(s3["url"] + "/runs/nope")
