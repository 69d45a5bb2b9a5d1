import copy
import subprocess
import sys

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


def test_logits_rank_classes_by_angle_to_their_prototype(tiny_model):
    # random features (cosines near 0, so the ranking has wide margins); class c's prototype is
    # the mean of its support features, computed here
    g = torch.Generator().manual_seed(0)
    support_f = torch.randn(6, tiny_model.feature_dim, generator=g)
    support_y = torch.tensor([0, 0, 1, 1, 2, 2])
    protos = support_f.view(3, 2, -1).mean(1)
    scale = tiny_model.logit_scale.item()
    # queries on a prototype's direction, whatever their length, score `scale` (cosine 1: the
    # largest logit there is) for that class; the other classes score less
    query_f = torch.stack([3 * protos[2], 0.5 * protos[0], protos[1]])
    logits = tiny_model.logits(support_f, support_y, 3, query_f).detach()
    assert logits.shape == (3, 3)
    assert logits.argmax(1).tolist() == [2, 0, 1]
    assert torch.allclose(logits[[0, 1, 2], [2, 0, 1]], torch.full((3,), scale), rtol=1e-5)
    assert (logits.topk(2, dim=1).values.diff(dim=1) < -0.5).all(), logits
    # nearer in angle scores higher: a query between prototypes 0 and 1, nearer 0
    between = tiny_model.logits(support_f, support_y, 3, (0.7 * protos[0] + 0.3 * protos[1])[None])
    assert between.argmax().item() == 0 and between[0, 1] > between[0, 2]
    # the learnable scale is a temperature: twice the scale, twice every logit
    hot = copy.deepcopy(tiny_model)
    with torch.no_grad():
        hot.logit_scale.mul_(2)
    assert torch.allclose(hot.logits(support_f, support_y, 3, query_f), 2 * logits, rtol=1e-5)
    # the backbone's own features: cosines in [-1, 1], so logits within the scale
    x = torch.randint(0, 255, (10, 1, 32, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        f = tiny_model.features(tiny_model.preprocess(x))
        real = tiny_model.logits(f[:6], support_y, 3, f[6:])
    assert real.shape == (4, 3) and real.abs().max() <= scale * (1 + 1e-5)


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


# what only building a backbone (or an FSDP run) needs: ~1.5 s of imports in every process that
# loaded them, and the suite starts hundreds (drivers, Ray workers, torchrun ranks)
HEAVY = ["timm", "torchvision", "torch._dynamo", "torch.distributed.fsdp"]
COMMAND_MODULES = [
    "jobs.train.command",
    "jobs.collect.command",
    "jobs.pretrain",
    "jobs.pipeline",
    "hyperflow.drift",
    "hyperflow.simulator",
    "hyperflow.evaluation.worker",
]


@pytest.mark.parametrize(
    "build, loaded",
    [
        ("", []),
        # the control: the probe sees them once a backbone is built
        ("hyperflow.model.TargetModel(hyperflow.model.TargetConfig(backbone='test_resnet'))",
         ["timm", "torch._dynamo", "torch.distributed.fsdp", "torchvision"]),
    ],
)  # fmt: skip
def test_the_commands_modules_load_timm_only_to_build_a_backbone(build, loaded):
    code = f"import sys, hyperflow.model, {', '.join(COMMAND_MODULES)}\n{build}\n"
    code += f"print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(loaded)
