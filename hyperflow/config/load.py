"""The whole run configuration, loaded from YAML plus `--set` overrides, and its error messages.

Every problem of a config (unknown key, wrong type, out of range, unknown registry name, keys that
disagree) is one UserError naming each offending key in full, e.g.
"config key 'train.grad_accum' must be >= 1, got 0"; the CLI turns it into exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from hyperflow.config.base import BadKey, Section
from hyperflow.config.collect import CollectConfig
from hyperflow.config.evaluate import EvaluateConfig
from hyperflow.config.sections import (
    AdaptConfig,
    DataConfig,
    EpisodeConfig,
    PretrainConfig,
    TargetConfig,
)
from hyperflow.config.train import DriftTrainConfig, SmatTrainConfig
from hyperflow.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Config(Section):
    target: TargetConfig = Field(default_factory=TargetConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    train: DriftTrainConfig = Field(default_factory=DriftTrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    smat: SmatTrainConfig = Field(default_factory=SmatTrainConfig)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Config from a named file in hyperflow/configs or a YAML path, then `a.b=value` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"config {name_or_path!r} not found (named configs: {names}, or a path)")
    raw = _yaml(path.read_text(), f"config file {str(path)!r}") or {}
    if not isinstance(raw, dict):
        raise UserError(f"config {str(path)!r} must be a YAML mapping")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form section.key=value")
        *parents, leaf = key.split(".")
        node = raw
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"config key {'.'.join(parents[: i + 1])!r} has no keys")
        node[leaf] = _yaml(value, f"override {item!r}")
    return validate(Config, raw)


def _yaml(text: str, what: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{what} is not valid YAML ({first})") from None


def to_dict(cfg: Config) -> dict:
    """The config as plain dicts and lists (manifests, drift.json, logs)."""
    return cfg.model_dump()


def validate(cls: type[BaseModel], raw: dict, prefix: str = ""):
    """`cls` built from `raw`, or one UserError naming every bad key (under `prefix`, e.g.
    "train." when a section is checked on its own)."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        lines = [_message(cls, err, prefix) for err in e.errors(include_url=False)]
        raise UserError("; ".join(dict.fromkeys(lines))) from None


def _message(cls: type[BaseModel], err: dict, prefix: str) -> str:
    loc = [p for p in err["loc"] if p != "[key]"]
    error = err.get("ctx", {}).get("error")
    path = [*prefix.split(".")[:-1], *loc, *([error.key] if isinstance(error, BadKey) else [])]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    got = f", got {err['input']!r}"
    kind, ctx = err["type"], err.get("ctx", {})
    if isinstance(error, BadKey):
        return f"config key {key!r} {error}"
    if isinstance(error, ValueError):
        return f"config key {key!r} {error}{got}"
    if kind == "extra_forbidden":
        valid = sorted(_model_at(cls, loc[:-1]).model_fields)
        return f"config key {key!r} does not exist (valid here: {valid})"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"config key {key!r} must be {bounds[kind]} {bound}{got}"
    types = {"int": "int", "float": "float", "string": "str", "bool": "bool", "list": "list"}
    if kind.endswith(("_type", "_parsing")) and kind.split("_")[0] in types:
        return f"config key {key!r} expects {types[kind.split('_')[0]]}{got}"
    if kind in ("model_type", "dict_type"):
        return f"config key {key!r} must be a mapping{got}"
    if kind == "too_short":
        return f"config key {key!r} must not be empty{got}"
    return f"config key {key!r} {err['msg'].replace('Input should be', 'must be')}{got}"


def _model_at(cls: type[BaseModel], loc: list) -> type[BaseModel]:
    # the section class at `loc` (for the valid keys next to an unknown one)
    for part in loc:
        cls = cls.model_fields[part].annotation
    return cls
