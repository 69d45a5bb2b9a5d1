"""Typed run configuration: YAML files (named or by path) plus `--set key=value` overrides.

Every section is a dataclass; a key that no dataclass field names is an error that names the key,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hyperflow.errors import UserError
from hyperflow.model import TargetConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "glyphs"  # dataset spec: glyphs | folder:PATH
    cache_dir: str | None = None  # None: $HYPERFLOW_CACHE or ~/.cache/hyperflow


@dataclass
class EpisodeConfig:
    way: int = 5
    shot: int = 5
    query: int = 15
    variable: bool = False  # Meta-Dataset-style variable way/shot


@dataclass
class PretrainConfig:
    epochs: int = 30
    max_seconds: float = 240.0  # wall-clock cap; the quickstart must stay fast on 2 cores
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0


@dataclass
class AdaptConfig:
    steps: int = 20  # T: Adam steps of every gradient method and of every trajectory
    lr: dict[str, float] = field(default_factory=dict)  # method -> fixed lr; missing: grid search
    lr_grid: list[float] = field(default_factory=lambda: [3e-3, 1e-2, 3e-2, 1e-1])
    full_lr_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    val_episodes: int = 4  # per held-out domain, disjoint seeds from the evaluation episodes


@dataclass
class CollectConfig:
    episodes: int = 400
    domains: list[str] = field(default_factory=list)  # empty: every base domain
    shifts: list[str] = field(default_factory=lambda: ["noise", "blur", "contrast", "thick"])
    clean_fraction: float = 0.25  # share of episodes without an on-the-fly shift
    lr_min: float = 1e-2  # per-episode lr ~ log-uniform [lr_min, lr_max]
    lr_max: float = 1e-1
    inits: int = 2  # trajectories per episode, from different init noise
    sigma: float = 0.0  # std of Gaussian noise added to theta_0 for inits after the first
    shard_size: int = 32  # episodes per shard (one actor task writes one shard)
    format: str = "both"  # zarr | wds | both
    theta_dtype: str = "float16"
    # raw | delta | delta2 (engine/stores/encoding.py); raw keeps wds theta uncompressed, the
    # fastest to stream (half the loader CPU) for 1.5x the wds bytes of delta2
    theta_encoding: str = "delta2"
    workers: int = 2
    cpus_per_worker: float = 1.0  # Ray resources of one collection actor; torch threads match
    gpus_per_worker: float = 0.0  # fractions let several simulators share one GPU
    # seconds an actor may wait for a node with its resources before the job ends, naming them
    placement_timeout: float = 300.0
    # actor deaths a job survives: this share of its shards (at least 8); each death is logged
    replace_fraction: float = 0.25
    seed: int = 0
    # `hyperflow collect --focus DRIFT`: the store holds the uniform episodes 0..focus_prefix-1
    # (set it to the episodes the drift was trained on: old data + new batch, nested prefixes),
    # then the `episodes` candidates where the drift adapts worst (focus_score), out of
    # focus_pool per chosen episode, drawn from the fresh indices focus_start.. (past any uniform
    # store's, so no collected episode comes back); focus_steps: HyperFlow's Euler steps
    focus_prefix: int = 0
    focus_pool: int = 4
    focus_start: int = 1_000_000
    focus_steps: int = 20
    # what "adapts worst" means (hyperflow/focus.py): "gap", L(theta_HF) - L(bias-tuning's
    # endpoint), simulates bias-tuning per candidate (a trajectory's cost, without its writes);
    # "ratio", L(theta_HF) / L(theta_0), forward passes only, but it picks easy episodes where
    # there was little to gain (measured: docs/scaling.md)
    focus_score: str = "gap"


@dataclass
class DriftTrainConfig:
    size: str = "small"  # preset: small | base | large (hyperflow/drift/sizes.py)
    # explicit drift dimensions override the preset's; null: the preset's value
    layer_dim: int | None = None  # per-layer token width d
    width: int | None = None  # trunk width w
    depth: int | None = None  # FiLM blocks in the trunk
    task_dim: int | None = None  # task embedding size
    time_dim: int | None = None  # Fourier features of t (even)
    encoder: str = "target"  # "target" (frozen backbone) or a timm name trained with the drift
    interpolant: str = "piecewise_cubic"
    site_stats: bool = True  # condition on per-bias activation statistics (encoder=target only)
    theta_noise: float = 0.0  # off-path perturbation of theta(t), in per-layer theta scales
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    grad_clip: float = 1.0
    # micro-batches of batch_size per optimizer step (per rank); steps counts optimizer steps
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 (autocast, runs on CPU) | fp16 (GPU) (Accelerate)
    fsdp: bool = False  # shard parameters, gradients and optimizer state over ranks (FSDP2)
    checkpoint_every: int = 500
    shuffle_buffer: int = 256
    # frozen-encoder inputs (features, site statistics) kept per record id, LRU, per rank
    cache_bytes: int = 2 * 1024**3  # 0: no cache
    # train on the store's first N records in manifest order (0: all of them); prefixes nest, so
    # a scaling curve's smaller data sizes are subsets of its larger ones (SMAT uses it too)
    max_records: int = 0
    cache_records: int | None = None  # optional further bound in records (older configs)
    loader_workers: int = 1
    format: str = "wds"
    seed: int = 0


@dataclass
class SmatTrainConfig:
    """`hyperflow train --method smat` (hyperflow/smat). Streaming (train.format,
    train.shuffle_buffer, train.loader_workers) is shared with the drift trainer."""

    experts: int = 8  # M, paper (num_experts: 8)
    tau: float = 0.1  # share of non-zero gates per expert; paper: sparsity target 0.9 = 1 - tau
    kd_weight: float = 1 / 3  # KD / CE; paper: (1 - lam) CE + lam KD, lam = 0.25
    temperature: float = 2.0  # KD temperature, paper
    width: int = 128  # router hidden width (ours)
    steps: int = 1000
    batch_size: int = 8  # episodes per rank and step (paper: 4)
    # Adam in the bias space: the paper's SGD learning rates do not transfer (ours)
    lr: float = 1e-3  # dense delta and router
    gate_lr: float = 0.05  # gates' log_alpha (the paper gives the masks a much larger lr)
    weight_decay: float = 0.0  # paper
    warmup: int = 50
    grad_clip: float = 5.0  # paper (max_grad_norm: 5); 0: off
    checkpoint_every: int = 500
    seed: int = 0


@dataclass
class EvaluateConfig:
    episodes: int = 100  # per domain
    methods: list[str] = field(
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
    domains: list[str] = field(default_factory=list)  # empty: every domain of the dataset
    # image shift families drawn per episode, as collection draws them (empty: none). With the
    # base domains and collect.shifts this is the distribution trajectories were collected on,
    # where settings may be searched without looking at a held-out domain
    shifts: list[str] = field(default_factory=list)
    solver: str = "euler"
    solver_steps: list[int] = field(default_factory=lambda: [1, 5, 20, 50])
    # hyperflow_*_ls methods: after the solver, the support loss at theta_0 + s (theta_T -
    # theta_0) for each scale s, one batched forward call (no backward), keeping the lowest;
    # 1.0 in the list keeps plain HyperFlow's theta_T a candidate
    step_scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])
    # HyperFlow runs the support set through the encoder this many images at a time (0: all at
    # once). Exact: features and site moments are per image. Its peak memory is then one chunk's
    # activations, at the price of one more forward call per chunk; the gradient baselines tune on
    # the whole support set at once, as usual.
    encode_chunk: int = 0
    workers: int = 2
    # each worker adapts on the device Ray assigns it: a GPU (or a share: 0.25 puts four workers
    # on one) when > 0, the CPU otherwise; memory is measured on that device
    gpus_per_worker: float = 0.0
    placement_timeout: float = 300.0  # seconds a worker may wait for a node with its resources
    replace_fraction: float = 0.25  # actor replacements allowed, as a share of episode chunks
    seed: int = 1000


@dataclass
class Config:
    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    train: DriftTrainConfig = field(default_factory=DriftTrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    smat: SmatTrainConfig = field(default_factory=SmatTrainConfig)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Config from a named file in hyperflow/configs or a YAML path, then `a.b=value` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"config {name_or_path!r} not found (named configs: {names}, or a path)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise UserError(f"config {str(path)!r} must be a YAML mapping")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form section.key=value")
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return _build(Config, raw, "")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise UserError(f"config key {prefix.rstrip('.')!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise UserError(
                f"config key {prefix + str(key)!r} does not exist (valid here: {sorted(names)})"
            )
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check(value, hint, prefix + key)
    return cls(**kwargs)


def _check(value, hint, key: str):
    """Light type check so `--set pretrain.epochs=abc` fails here, not deep inside a job."""
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    simple = {int: int, float: float, str: str, bool: bool, list: list, dict: dict}
    if origin in simple and not isinstance(value, simple[origin]):
        raise UserError(f"config key {key!r} expects {origin.__name__}, got {value!r}")
    if origin is int and isinstance(value, bool):
        raise UserError(f"config key {key!r} expects int, got {value!r}")
    return value
