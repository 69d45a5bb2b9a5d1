"""One optimizer step of the trainer (jobs.train.step) in-process, with a real Accelerator:
k accumulated micro-batches make the step one k-times bigger batch makes, and bf16 autocast
trains a drift network whose saved weights are float32 and load."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch import nn

from hyperflow.drift import DriftConfig, DriftNet, drift_loss, load_drift, save_drift
from jobs.train.accel import full_state
from jobs.train.step import groups, optimizer_step

T = 5  # trajectory steps


@pytest.fixture(autouse=True)
def fresh_accelerate():
    # Accelerate keeps one process-wide state (precision, accumulation steps); each test builds
    # its own Accelerator, as accelerate's own test cases do
    torch.set_num_threads(1)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class PerRecordLoss(nn.Module):
    """Mean over records of each record's drift loss alone, with t drawn from the record's own
    seed: a batch's loss is then exactly the mean of its records' losses however they are
    grouped, so k micro-batches and their union define the same gradient."""

    def __init__(self, net: DriftNet):
        super().__init__()
        self.net = net

    def forward(self, records: list[tuple]) -> torch.Tensor:
        losses = []
        for knots, support, seed in records:  # knots [1, T+1, P], support (x, y)
            task = self.net.encode_tasks([support])
            gen = torch.Generator().manual_seed(seed)
            losses.append(drift_loss(self.net, knots, task, "linear", gen, theta_noise=0.2))
        return torch.stack(losses).mean()


def _records(model, episodes) -> list[tuple]:
    g = torch.Generator().manual_seed(3)
    P = model.layout.size
    return [
        (
            torch.randn(1, 1, P, generator=g).cumsum(1).expand(1, T + 1, P) * 0.1
            + 0.01 * torch.randn(1, T + 1, P, generator=g).cumsum(1),
            (model.preprocess(ep.support_x), ep.support_y),
            100 + i,
        )
        for i, ep in enumerate(episodes)
    ]


def _net(model) -> DriftNet:
    torch.manual_seed(0)
    cfg = DriftConfig(interpolant="linear", site_stats=False, width=48, depth=2)
    return DriftNet(model.layout, cfg, model.backbone, model.feature_dim, T)


def _one_step(model, records, k: int) -> tuple[dict, float, int]:
    """One optimizer step (SGD) over `records` split into k micro-batches; returns the
    parameters' updates, the reported loss and the schedule's step count."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=k)
    objective = PerRecordLoss(_net(model))
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    opt = torch.optim.SGD(objective.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    objective, opt, sched = accelerator.prepare(objective, opt, sched)
    size = len(records) // k
    micro = [records[i * size : (i + 1) * size] for i in range(k)]
    loss = optimizer_step(accelerator, objective, opt, sched, micro, objective, grad_clip=1.0)
    updates = {n: p.detach() - before[n] for n, p in objective.named_parameters()}
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return updates, loss, sched.scheduler.last_epoch


def test_accumulated_micro_batches_make_the_big_batch_step(tiny_model, episodes):
    records = _records(tiny_model, episodes)  # 4 records
    big, big_loss, big_steps = _one_step(tiny_model, records, k=1)
    acc, acc_loss, acc_steps = _one_step(tiny_model, records, k=2)
    assert big_steps == acc_steps == 1, "one optimizer and schedule step either way"
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)
    assert any(u.abs().max() > 1e-4 for u in big.values()), "the step moved the network"
    # Each record's loss and gradient are computed alike in both runs (the same ops on the
    # same inputs, one record at a time) and reach the sum scaled by exactly 1/4 (1/4 in the
    # big mean; 1/2 in a micro-batch's mean times the 1/k = 1/2 of accelerator.backward: powers
    # of two). Only the order of adding the 4 records' gradients differs: a few float32 roundings
    # (2^-24 each) of terms of gradient size, times lr 0.1. rtol 1e-5 / atol 1e-8 leaves > 10x;
    # a wrong accumulation is off by 50-100% of the update (no 1/k doubles it: the gradient
    # norm, ~0.01 here, stays under the clip of 1; a lost micro-batch halves its share).
    for n in big:
        torch.testing.assert_close(acc[n], big[n], rtol=1e-5, atol=1e-8, msg=n)


def test_groups_cut_an_endless_stream_into_steps():
    stream = iter(range(10))
    assert list(groups(stream, 3)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_bf16_autocast_lowers_the_loss_and_saves_float32(tmp_path, tiny_model, episodes):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    net = _net(tiny_model)
    dtypes = []
    net.stem.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    objective = PerRecordLoss(net)
    opt = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    objective, opt, sched = accelerator.prepare(objective, opt, sched)
    records = _records(tiny_model, episodes)
    losses = [
        optimizer_step(accelerator, objective, opt, sched, [records], objective, grad_clip=1.0)
        for _ in range(30)
    ]
    assert set(dtypes) == {torch.bfloat16}, "the trunk ran under bf16 autocast"
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    state = full_state(accelerator, objective, "net.")
    assert state and {v.dtype for v in state.values()} == {torch.float32}
    core = accelerator.unwrap_model(objective).net
    save_drift(core, tmp_path, state=state)
    loaded = load_drift(tmp_path, tiny_model.backbone, tiny_model.feature_dim).eval()
    knots, support, _ = records[0]
    theta, t = knots[:, 2], torch.tensor([2.0])
    with torch.no_grad():
        want = core.eval()(theta, t, core.encode_tasks([support]))
        got = loaded(theta, t, loaded.encode_tasks([support]))
    assert torch.equal(got, want)
