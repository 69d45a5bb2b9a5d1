"""SMAT in the evaluator: the saved SMAT merges as the trained one did, a SMAT for other biases is
refused, smat_finetune is bias-tuning started from the merge, and the method plan."""

import pytest
import torch

from hyperflow.adapt.methods import adapt, predict
from hyperflow.bias import get_theta
from hyperflow.errors import UserError
from hyperflow.evaluation.plan import lr_candidates, method_specs
from hyperflow.model import TargetConfig, TargetModel
from hyperflow.smat import Smat, SmatConfig, adapt_smat, adapt_smat_finetune, load_smat, save_smat


def _smat(model, trained: bool = True) -> Smat:
    torch.manual_seed(0)
    smat = Smat(SmatConfig(experts=4, tau=0.3, width=16), model.layout.size, model.feature_dim)
    if trained:  # a non-zero delta and a router that reads the support set
        with torch.no_grad():
            smat.theta_delta.normal_(0, 0.1)
            smat.router.rho[-1].weight.normal_(0, 1.0)
            smat.gates.multiplier.fill_(0.5)
    return smat.eval()


def test_saved_smat_merges_every_episode_as_the_trained_one(tiny_model, episodes, tmp_path):
    smat = _smat(tiny_model)
    save_smat(smat, tiny_model, tmp_path / "smat", {"steps": 3})
    loaded = load_smat(tmp_path / "smat", tiny_model)
    assert not loaded.training and loaded.cfg == smat.cfg
    assert torch.equal(loaded.gates.multiplier, smat.gates.multiplier)
    for ep in episodes:
        want = adapt_smat(tiny_model, smat, ep).theta
        assert torch.equal(adapt_smat(tiny_model, loaded, ep).theta, want)


def test_smat_for_another_bias_layout_is_refused(tiny_model, tmp_path):
    other = TargetModel(TargetConfig(exclude=["*bn*"])).eval()
    save_smat(_smat(other), other, tmp_path / "other")
    with pytest.raises(UserError, match="bias layout") as e:
        load_smat(tmp_path / "other", tiny_model)
    assert other.layout.hash() in str(e.value) and tiny_model.layout.hash() in str(e.value)
    with pytest.raises(UserError, match="smat.json"):
        load_smat(tmp_path / "nothing", tiny_model)


def test_zero_shot_merge_moves_the_biases_and_the_predictions(tiny_model, episodes):
    smat, ep = _smat(tiny_model), episodes[0]
    theta = adapt_smat(tiny_model, smat, ep).theta
    base = get_theta(tiny_model.backbone, tiny_model.layout)
    assert theta.shape == base.shape and not torch.allclose(theta, base)
    direct = predict(tiny_model, ep, adapt("direct", tiny_model, ep, 0.0, 0, 0))
    assert not torch.allclose(predict(tiny_model, ep, adapt_smat(tiny_model, smat, ep)), direct)


def test_smat_finetune_is_bias_tuning_from_the_merge(tiny_model, episodes):
    ep = episodes[1]
    # an untrained SMAT merges to the pretrained biases: fine-tuning it is plain bias-tuning
    untrained = _smat(tiny_model, trained=False)
    tuned = adapt_smat_finetune(tiny_model, untrained, ep, 0.03, 3, seed=7).theta
    assert torch.allclose(tuned, adapt("bias_tuning", tiny_model, ep, 0.03, 3, 7).theta)
    # zero steps keep the merge; a trained SMAT's merge is the starting point, not theta_pre
    smat = _smat(tiny_model)
    merge = adapt_smat(tiny_model, smat, ep).theta
    assert torch.equal(adapt_smat_finetune(tiny_model, smat, ep, 0.03, 0, 7).theta, merge)
    three = adapt_smat_finetune(tiny_model, smat, ep, 0.03, 3, 7).theta
    assert not torch.allclose(three, merge) and not torch.allclose(three, tuned)


def test_plan_needs_a_smat_and_tunes_smat_finetune_like_bias_tuning():
    names = ["bias_tuning", "smat", "smat_finetune"]
    with pytest.raises(UserError, match="--smat"):
        method_specs(names, {}, 20, {}, "euler", [1])
    lrs = {"bias_tuning": 0.03, "smat_finetune": 0.01}
    specs = {m.name: m for m in method_specs(names, lrs, 20, {}, "euler", [1], smat="s3://b/s")}
    assert (specs["smat"].kind, specs["smat"].steps) == ("smat", 0)
    assert (specs["smat_finetune"].steps, specs["smat_finetune"].lr) == (20, 0.01)
    grid = [1e-3, 1e-2]
    search = lr_candidates(names, grid, [1e-5], 20)
    assert sorted(m.lr for m in search if m.kind == "smat_finetune") == grid
    assert not [m for m in search if m.kind == "smat"], "the zero-shot merge has no lr"
