"""The config schema: every key refuses a bad value naming the key, every registry name is
admitted, cross-key checks, and no torch at import."""

import subprocess
import sys

import pytest

from hyperflow.config import (
    Config,
    check_train_runtime,
    load_config,
    to_dict,
)
from hyperflow.config import registries as reg
from hyperflow.errors import UserError


def test_quickstart_loads_with_overrides():
    cfg = load_config("quickstart", ["pretrain.epochs=3", "collect.shifts=[noise]"])
    assert cfg.pretrain.epochs == 3
    assert cfg.collect.shifts == ["noise"]
    assert cfg.target.backbone


@pytest.mark.parametrize("name", ["quickstart", "tiny"])
def test_named_configs_load_and_round_trip(name):
    cfg = load_config(name)
    assert Config.model_validate(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("pretrain.epoch=3", "pretrain.epoch"),
        ("nosection.x=1", "nosection"),
        ("pretrain.epochs=abc", "pretrain.epochs"),
        ("pretrain", "pretrain"),
        ("train=5", "'train' must be a mapping"),
        ("train.steps.x=1", "'train.steps'"),
    ],
)
def test_bad_keys_are_named(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config("quickstart", [override])


def test_unknown_config_name():
    with pytest.raises(UserError, match="no_such_config"):
        load_config("no_such_config")


def test_yaml_file_with_bad_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  sizee: small\n")
    with pytest.raises(UserError, match="train.sizee"):
        load_config(str(path))


# one bad value per key (YAML text, as `--set` takes it); the message names the full key
BAD = {
    "target": {
        "backbone": "''",
        "channels": "2",
        "image_size": "3",
        "checkpoint": "5",
        "include": "'*.bias'",
        "exclude": "[1]",
        "init_scale": "0",
    },
    "data": {"dataset": "imagenet", "cache_dir": "[]"},
    "episodes": {"way": "0", "shot": "-1", "query": "0", "variable": "maybe"},
    "pretrain": {
        "epochs": "abc",
        "max_seconds": "0",
        "batch_size": "0",
        "lr": "-1e-3",
        "weight_decay": "-1",
        "seed": "-1",
        "cpus_per_worker": "0",
        "gpus_per_worker": "-0.5",
        "max_failures": "-1",
        "placement_timeout": "0",
    },
    "adapt": {
        "steps": "0",
        "lr": "{bias_tuning: 0}",
        "lr_grid": "[]",
        "full_lr_grid": "[0.001, -1]",
        "val_episodes": "0",
    },
    "collect": {
        "procedural_exclude": "[conv, nope]",
        "procedural_counts": "[3, 2]",
        "episodes": "0",
        "domains": "latin",
        "shifts": "[noise, sparkle]",
        "clean_fraction": "1.5",
        "lr_min": "0",
        "lr_max": "-1",
        "inits": "0",
        "sigma": "-0.1",
        "shard_size": "0",
        "format": "tar",
        "theta_dtype": "int8",
        "theta_encoding": "zip",
        "workers": "0",
        "cpus_per_worker": "0",
        "gpus_per_worker": "-1",
        "placement_timeout": "-5",
        "replace_fraction": "-0.1",
        "seed": "-1",
        "focus_prefix": "-1",
        "focus_pool": "0",
        "focus_start": "-1",
        "focus_steps": "0",
        "focus_score": "best",
    },
    "train": {
        "size": "huge",
        "layer_dim": "0",
        "width": "wide",
        "depth": "-2",
        "task_dim": "true",
        "time_dim": "7",
        "encoder": "''",
        "interpolant": "spline",
        "site_stats": "1",
        "task_stats": "maybe",
        "theta_noise": "-0.5",
        "steps": "-1",
        "batch_size": "0",
        "lr": "0",
        "weight_decay": "-1",
        "warmup": "-1",
        "grad_clip": "-1",
        "grad_accum": "0",
        "mixed_precision": "fp8",
        "fsdp": "yes please",
        "checkpoint_every": "0",
        "shuffle_buffer": "0",
        "cache_bytes": "-1",
        "max_records": "-1",
        "cache_records": "-1",
        "loader_workers": "-1",
        "format": "both",
        "seed": "1.5",
        "workers": "-1",
        "min_workers": "-1",
        "cpus_per_worker": "0",
        "gpus_per_worker": "-1",
        "max_failures": "-1",
        "placement_timeout": "0",
    },
    "smat": {
        "experts": "0",
        "tau": "1",
        "kd_weight": "-1",
        "temperature": "0",
        "width": "0",
        "steps": "0",
        "batch_size": "0",
        "lr": "0",
        "gate_lr": "-1",
        "weight_decay": "-1",
        "warmup": "-1",
        "grad_clip": "-1",
        "checkpoint_every": "0",
        "seed": "-1",
    },
    "evaluate": {
        "episodes": "0",
        "methods": "[direct, hyperflow_spline]",
        "domains": "5",
        "shifts": "[warp]",
        "solver": "heun",
        "solver_steps": "[5, 0]",
        "step_scales": "[1, -0.5]",
        "encode_chunk": "-1",
        "compile": "sometimes",
        "memory": "[1]",
        "workers": "0",
        "gpus_per_worker": "-1",
        "placement_timeout": "0",
        "replace_fraction": "2",
        "seed": "-1",
    },
}


def test_every_key_has_a_bad_value():
    assert {s: set(v) for s, v in BAD.items()} == {
        s: set(type(getattr(Config(), s)).model_fields) for s in Config.model_fields
    }


@pytest.mark.parametrize(
    "key, value", [(f"{s}.{k}", v) for s, keys in BAD.items() for k, v in keys.items()]
)
def test_a_bad_value_is_one_user_error_naming_the_key(key, value):
    with pytest.raises(UserError) as e:
        load_config("tiny", [f"{key}={value}"])
    assert f"config key '{key}" in str(e.value), str(e.value)  # '{key}' or '{key}[i]'
    assert str(e.value).count("config key") == 1, "one problem, one message"


@pytest.mark.parametrize(
    "sets",
    [
        "pretrain.epochs=abc",
        "train.steps=-1",
        "train.grad_accum=0",
        "smat.tau=0",
        "evaluate.step_scales=[]",
        "evaluate.step_scales=[.nan]",
        "evaluate.step_scales=[true]",
        "collect.clean_fraction=-0.1",
        "target.channels=true",
    ],
)
def test_strict_values(sets):
    with pytest.raises(UserError, match=f"'{sets.split('=')[0]}"):
        load_config("tiny", [sets])


def test_the_message_says_what_the_key_must_be():
    with pytest.raises(UserError, match=r"^config key 'train.grad_accum' must be >= 1, got 0$"):
        load_config("tiny", ["train.grad_accum=0"])
    with pytest.raises(UserError, match=r"'pretrain.epochs' expects int, got 'abc'"):
        load_config("tiny", ["pretrain.epochs=abc"])
    with pytest.raises(UserError, match=r"'evaluate.solver_steps\[1\]' must be >= 1, got 0"):
        load_config("tiny", ["evaluate.solver_steps=[5,0]"])


def test_yaml_quirks_read_as_meant():
    cfg = load_config("tiny", ["train.lr=1e-3", "train.mixed_precision=no", "smat.tau=3e-1"])
    assert (cfg.train.lr, cfg.train.mixed_precision, cfg.smat.tau) == (1e-3, "no", 0.3)


def test_several_bad_keys_are_all_named_in_one_error():
    with pytest.raises(UserError) as e:
        load_config("tiny", ["train.steps=0", "smat.experts=0"])
    assert "'train.steps'" in str(e.value) and "'smat.experts'" in str(e.value)


REGISTRIES = [
    ("collect.format", reg.collect_formats),
    ("collect.theta_dtype", lambda: reg.THETA_DTYPES),
    ("collect.theta_encoding", lambda: reg.THETA_ENCODINGS),
    ("collect.focus_score", lambda: reg.SCORES),
    ("train.size", reg.drift_sizes),
    ("train.interpolant", reg.interpolants),
    ("train.mixed_precision", lambda: reg.PRECISIONS),
    ("train.format", lambda: reg.STORES),
    ("evaluate.solver", reg.solvers),
    ("data.dataset", reg.datasets),
]


@pytest.mark.parametrize(
    "key, name", [(key, name) for key, names in REGISTRIES for name in names()]
)
def test_every_registry_entry_is_accepted(key, name):
    if key == "data.dataset" and name == "folder":
        name = "folder:/some/path"  # the loader checks the path, the schema only the kind
    section, leaf = key.split(".")
    assert getattr(getattr(load_config("tiny", [f"{key}={name}"]), section), leaf) == name


def test_every_list_registry_entry_is_accepted():
    methods, shifts = reg.evaluate_methods(), reg.shifts()
    cfg = load_config("tiny", [f"evaluate.methods=[{','.join(methods)}]"])
    assert cfg.evaluate.methods == methods
    assert load_config("tiny", [f"evaluate.shifts=[{','.join(shifts)}]"]).evaluate.shifts == shifts
    lrs = "{" + ", ".join(f"{m}: 0.01" for m in reg.tuned_methods()) + "}"
    assert set(load_config("tiny", [f"adapt.lr={lrs}"]).adapt.lr) == set(reg.tuned_methods())
    collectable = reg.collection_shifts()
    cfg = load_config("tiny", [f"collect.shifts=[{','.join(collectable)}]"])
    assert cfg.collect.shifts == collectable


@pytest.mark.parametrize("family", sorted(reg.HELD_OUT_SHIFTS))
def test_held_out_families_are_refused_in_collection_by_name_and_why(family):
    with pytest.raises(UserError, match=rf"'collect.shifts\[1\]'.*held out.*'{family}'") as e:
        load_config("tiny", [f"collect.shifts=[noise, {family}]"])
    assert "generalisation" in str(e.value)
    # evaluation may draw them: that is where they measure generalisation
    assert family in load_config("tiny", [f"evaluate.shifts=[{family}]"]).evaluate.shifts


def test_held_out_families_are_never_collectable():
    assert reg.HELD_OUT_SHIFTS < set(reg.shifts())
    assert not reg.HELD_OUT_SHIFTS & set(reg.collection_shifts())


@pytest.mark.parametrize(
    "sets, key",
    [
        (["collect.lr_min=0.2", "collect.lr_max=0.1"], "collect.lr_min"),
        (["collect.focus_prefix=16", "collect.focus_start=8"], "collect.focus_start"),
        (["train.time_dim=6", "train.time_dim=5"], "train.time_dim"),
        (["train.encoder=resnet18"], "train.site_stats"),
        (["train.site_stats=false", "train.task_stats=true"], "train.task_stats"),
        (["train.encoder=resnet18", "train.site_stats=false", "train.fsdp=true"], "train.fsdp"),
        (["train.workers=2", "train.min_workers=3"], "train.min_workers"),
        (["train.min_workers=1"], "train.min_workers"),
    ],
)
def test_cross_key_checks_name_the_key(sets, key):
    with pytest.raises(UserError, match=f"^config key '{key}'"):
        load_config("tiny", sets)


@pytest.mark.parametrize(
    "sets",
    [
        ["collect.lr_min=0.1", "collect.lr_max=0.1"],
        ["collect.focus_prefix=16", "collect.focus_start=16"],
        ["train.encoder=resnet18", "train.site_stats=false"],
        ["train.workers=4", "train.min_workers=2"],
        ["train.workers=4", "train.min_workers=4"],
        ["train.workers=4"],  # min_workers 0: the same as workers
        ["train.fsdp=true"],
    ],
)
def test_cross_key_checks_admit_consistent_values(sets):
    load_config("tiny", sets)


def test_ray_train_defaults():
    tc, pc = Config().train, Config().pretrain
    assert (tc.workers, tc.min_workers, tc.max_failures) == (0, 0, 3)
    assert (tc.cpus_per_worker, tc.gpus_per_worker, tc.placement_timeout) == (1.0, 0.0, 300.0)
    assert (pc.cpus_per_worker, pc.gpus_per_worker, pc.max_failures) == (1.0, 0.0, 3)
    assert pc.placement_timeout == 300.0


def test_runtime_checks_name_the_key():
    with pytest.raises(UserError, match="'train.fsdp'.*--nproc 2"):
        check_train_runtime(load_config("tiny", ["train.fsdp=true"]).train, world=1)
    check_train_runtime(load_config("tiny", ["train.fsdp=true"]).train, world=2)
    check_train_runtime(load_config("tiny", ["train.mixed_precision=bf16"]).train, world=1)


def test_fp16_needs_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="'train.mixed_precision' fp16 needs a GPU"):
        check_train_runtime(load_config("tiny", ["train.mixed_precision=fp16"]).train, 1)


def test_importing_the_config_loads_no_torch():
    code = (
        "import sys, hyperflow.config; print(sorted({'torch', 'timm', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_override_that_is_not_yaml_is_named():
    with pytest.raises(
        UserError, match=r"override \"train.interpolant='linear\" is not valid YAML"
    ):
        load_config("tiny", ["train.interpolant='linear"])
