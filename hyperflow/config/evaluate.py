"""The `evaluate` section: methods, episodes, the ODE solver and the evaluation actors."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from hyperflow.config import registries
from hyperflow.config.base import (
    Fraction,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Section,
    registry,
)

Method = Annotated[str, registry(registries.evaluate_methods)]
Shift = Annotated[str, registry(registries.shifts)]


class EvaluateConfig(Section):
    episodes: PosInt = 100  # per domain
    methods: Annotated[list[Method], Field(min_length=1)] = Field(
        default_factory=lambda: [
            "direct",
            "head_tuning",
            "bias_tuning",
            "full_tuning",
            "hyperflow_linear",
            "hyperflow_pl",
            "hyperflow_cubic",
        ]
    )
    domains: list[str] = Field(default_factory=list)  # empty: every domain of the dataset
    # image shift families drawn per episode, as collection draws them (empty: none). With the
    # base domains and collect.shifts this is the distribution trajectories were collected on,
    # where settings may be searched without looking at a held-out domain
    shifts: list[Shift] = Field(default_factory=list)
    solver: Annotated[str, registry(registries.solvers)] = "euler"  # hyperflow/solvers.py
    solver_steps: Annotated[list[PosInt], Field(min_length=1)] = Field(
        default_factory=lambda: [1, 5, 20, 50]
    )
    # hyperflow_*_ls methods: after the solver, the support loss at theta_0 + s (theta_T -
    # theta_0) for each scale s, one batched forward call (no backward), keeping the lowest;
    # 1.0 in the list keeps plain HyperFlow's theta_T a candidate
    step_scales: Annotated[list[PosFloat], Field(min_length=1)] = Field(
        default_factory=lambda: [1.0, 1.5, 2.0, 3.0]
    )
    # HyperFlow runs the support set through the encoder this many images at a time (0: all at
    # once). Exact: features and site moments are per image. Its peak memory is then one chunk's
    # activations, at the price of one more forward call per chunk; the gradient baselines tune on
    # the whole support set at once, as usual.
    encode_chunk: NonNegInt = 0
    # HyperFlow's support pass and Euler steps run torch.compile'd, the steps in blocks of 10
    # (hyperflow/drift/compiled.py): cubic@20 at 1.8 floors against 3.3-3.5 eager (hyperflow bench
    # adapt, quickstart), for a one-off compile per evaluate worker (~15-25 s cold, ~2-5 s from
    # inductor's on-disk cache), not timed. Same results up to float rounding. Other solvers: eager.
    compile: bool = False
    # peak adaptation memory per method, each on a fresh Ray actor after the evaluation (~5-10 s
    # a method on a CPU); false leaves results.json's peak_memory_bytes null and the column "-"
    memory: bool = True
    workers: PosInt = 2
    # each worker adapts on the device Ray assigns it: a GPU (or a share: 0.25 puts four workers
    # on one) when > 0, the CPU otherwise; memory is measured on that device
    gpus_per_worker: NonNegFloat = 0.0
    placement_timeout: PosFloat = 300.0  # seconds a worker may wait for a node with its resources
    replace_fraction: Fraction = 0.25  # actor replacements allowed, as a share of episode chunks
    seed: NonNegInt = 1000
