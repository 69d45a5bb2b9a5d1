"""The checked-in cluster configs under cluster/: validated, never launched (no cloud here).

- cluster.yaml (Ray cluster launcher) against the JSON schema that ships inside the `ray` package
  and Ray's own validate_config;
- runtime_env.yaml through ray.runtime_env.RuntimeEnv;
- rayjob.yaml (KubeRay RayJob) for the fields KubeRay requires, GPUs, credentials only from a
  Secret, and an entrypoint that the project's own CLI parser accepts;
- every `hyperflow` command in cluster/README.md through the same parser.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

from hyperflow.config import load_config
from jobs.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

# what a config must never hold literally: AWS key ids, private keys, secret assignments
SECRET_TEXT = re.compile(
    r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY"
    r"|(aws_secret_access_key|RAY_AUTH_TOKEN|password)\s*[=:]\s*['\"]?[A-Za-z0-9/+]{8,}",
    re.IGNORECASE,
)
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
MUST_EXCLUDE = {".venv/", "runs/", ".git/"}


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _parse_hyperflow(argv: list[str]):
    """Parse `hyperflow ARGV` exactly as jobs.cli.main does (only the chosen subcommand's module
    is imported) and load its --config with its --set overrides; pytest.fail names the command."""
    chosen = next((a for a in argv if not a.startswith("-")), "")
    assert chosen in COMMANDS, f"unknown hyperflow command in {shlex.join(argv)!r}"
    try:
        args = build_parser(only=chosen).parse_args(argv)
    except SystemExit as e:  # argparse reports the bad flag on stderr and exits
        pytest.fail(f"`hyperflow {shlex.join(argv)}` does not parse (exit {e.code})")
    if getattr(args, "config", None):
        load_config(args.config, args.set)  # a config name or --set key that does not exist
    return args


# cluster.yaml


def test_cluster_yaml_validates_against_the_schema_shipped_in_ray():
    cfg = _load("cluster.yaml")
    schema = json.loads(RAY_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(cfg)]
    assert not errors, "\n".join(errors)

    # the schema is strict enough to catch a typo: the check above can fail
    typo = copy.deepcopy(cfg)
    typo["setup_command"] = typo.pop("setup_commands")
    assert not validator.is_valid(typo)
    typo = copy.deepcopy(cfg)
    typo["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5  # integers only
    assert not validator.is_valid(typo)


def test_cluster_yaml_passes_rays_own_validation():
    """What `ray up` does before talking to the cloud: fill in the provider's defaults, merge the
    setup commands, validate (schema plus cross-field rules such as min/max workers)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load("cluster.yaml")))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    # the package is installed on workers too, not only on the head
    assert (
        prepared["worker_setup_commands"][: len(prepared["setup_commands"])]
        == (prepared["setup_commands"])
    )


def test_cluster_yaml_has_a_cpu_head_and_a_gpu_worker_type():
    cfg = _load("cluster.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "actors stay off the head"
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, f"no worker type with a GPU among {sorted(workers)}"
    for t in gpu.values():
        assert t["resources"].get("CPU", 0) >= 1
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"]
        assert t["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance type"
        assert "IamInstanceProfile" in t["node_config"], "workers write shards to S3 themselves"


def test_cluster_yaml_installs_this_working_copy_with_the_s3_extra():
    cfg = _load("cluster.yaml")
    mounts = cfg["file_mounts"]
    remote = next(r for r, local in mounts.items() if local == ".")
    # "." is resolved where `ray up` runs: the repository root, which holds this package
    assert 'name = "hyperflow-engine"' in (REPO / "pyproject.toml").read_text()
    installs = [shlex.split(c) for c in cfg["setup_commands"] if "pip install" in c and remote in c]
    assert installs, f"no setup command installs {remote}"
    argv = installs[-1]
    assert "-e" in argv and f"{remote}[s3]" in argv
    # the cluster's Ray is the Ray that submits to it
    assert f"ray[default]=={ray.__version__}" in argv


def test_cluster_yaml_takes_the_auth_token_from_a_file_never_inline():
    cfg = _load("cluster.yaml")
    token = {r: local for r, local in cfg["file_mounts"].items() if r.endswith("/.ray/auth_token")}
    assert list(token.values()) == ["~/.ray/auth_token"], cfg["file_mounts"]
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    for cmd in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token ray start" in cmd, cmd
    commands = json.dumps({k: v for k, v in cfg.items() if k.endswith("commands")})
    assert "RAY_AUTH_TOKEN" not in commands  # it would expand on the node, where it is unset


def test_cluster_yaml_and_runtime_env_exclude_the_same_paths():
    rsync = {p.lstrip("/") for p in _load("cluster.yaml")["rsync_exclude"]}
    excludes = set(_load("runtime_env.yaml")["excludes"])
    assert rsync == excludes
    assert MUST_EXCLUDE <= excludes


# runtime_env.yaml


def test_runtime_env_yaml_is_accepted_by_ray():
    env = _load("runtime_env.yaml")
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)  # validates every field's type and value
    assert env["working_dir"] == "."  # `ray job submit` runs from the repository root
    assert MUST_EXCLUDE <= set(env["excludes"])
    secret = [name for name in env.get("env_vars", {}) if SECRET_NAME.search(name)]
    assert not secret, f"credentials in a runtime env are shown on the dashboard: {secret}"


# rayjob.yaml


def _containers(job: dict):
    """(group, pod spec, container) for the head and every worker group."""
    spec = job["spec"]["rayClusterSpec"]
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        pod = group["template"]["spec"]
        for c in pod["containers"]:
            yield name, pod, c


def test_rayjob_yaml_has_the_fields_kuberay_requires():
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47, name
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    ttl = spec["ttlSecondsAfterFinished"]
    assert isinstance(ttl, int) and ttl >= 0
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))  # KubeRay only checks it is YAML

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head and head[0]["image"] and head[0]["name"]
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers and containers[0]["image"] and containers[0]["name"]

    # token auth: KubeRay (>= 1.5.1) wants a rayVersion >= 2.52 next to it
    assert cluster["authOptions"]["mode"] == "token"
    version = tuple(int(x) for x in cluster["rayVersion"].split("."))
    assert version >= (2, 52, 0)


def test_rayjob_yaml_has_a_gpu_worker_group_with_limit_and_toleration():
    groups = _load("rayjob.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups]
    gpu = [g for g, lim in zip(groups, limits) if int(lim.get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, "no worker group with an nvidia.com/gpu limit"
    for g in gpu:
        tolerations = g["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), tolerations


def test_rayjob_yaml_reads_credentials_only_from_a_secret():
    job = _load("rayjob.yaml")
    for group, _, container in _containers(job):
        env = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert key in env, f"{group}: {key} missing (actors and drivers write to S3)"
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"], ref
        literal = [n for n, e in env.items() if SECRET_NAME.search(n) and "value" in e]
        assert not literal, f"{group}: literal credentials {literal}"


def test_rayjob_entrypoint_parses_with_the_projects_cli():
    job = _load("rayjob.yaml")
    word, *rest = shlex.split(job["spec"]["entrypoint"])
    assert word == "hyperflow"  # the console script the image installs
    args = build_parser().parse_args(rest)
    assert args.command == "pipeline"
    out = urlparse(args.out)
    assert out.scheme == "s3" and out.netloc and out.path.strip("/"), args.out
    _parse_hyperflow(rest)  # as main() parses it, and its --config loads


def test_images_and_ray_versions_agree():
    """Cluster and client must run one Ray version: the venv's, the image's, rayVersion's."""
    job = _load("rayjob.yaml")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    images = {c["image"] for _, _, c in _containers(job)}
    assert len(images) == 1, f"head and workers run different images: {images}"
    base = re.search(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)
    assert base and base.group(1).startswith(f"rayproject/ray:{ray.__version__}-"), base
    assert f'"ray[default]=={ray.__version__}"' in (CLUSTER / "Dockerfile").read_text()


# all of cluster/


def test_no_secret_is_written_in_cluster_files():
    for path in sorted(CLUSTER.iterdir()):
        if path.is_file():
            hits = [m.group(0)[:24] for m in SECRET_TEXT.finditer(path.read_text())]
            assert not hits, f"{path.name}: {hits}"


def _readme_commands() -> list[list[str]]:
    """Every `hyperflow ...` (or `python -m jobs.cli ...`) invocation in cluster/README.md's
    bash blocks, alone on a line or after `ray job submit ... --`."""
    text = (CLUSTER / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        pending = ""  # a line whose quotes are still open continues on the next one
        for line in block.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(pending + line, comments=True)
            except ValueError:
                pending += line + "\n"
                continue
            pending = ""
            for i, tok in enumerate(tokens):
                if i and tokens[i - 1] not in ("--", "do", ";"):
                    continue
                if tok == "hyperflow":
                    found.append(tokens[i + 1 :])
                elif tokens[i : i + 3] == ["python", "-m", "jobs.cli"]:
                    found.append(tokens[i + 3 :])
    return found


def test_readme_commands_parse_with_the_projects_cli():
    commands = _readme_commands()
    for argv in commands:
        _parse_hyperflow(argv)
    used = {argv[0] for argv in commands}
    wanted = {"pretrain", "collect", "inspect", "train", "evaluate", "pipeline"}
    assert wanted <= used, f"the guide lacks {sorted(wanted - used)}"
    # a million trajectories: episodes x the config's trajectories per episode
    collect = next(a for a in commands if a[0] == "collect" and "--episodes" in a)
    args = _parse_hyperflow(collect)
    cfg = load_config(args.config, args.set)
    assert args.episodes * cfg.collect.inits == 1_000_000
    for flag in ("target", "out"):
        assert getattr(args, flag).startswith("$B/"), "on object storage"
