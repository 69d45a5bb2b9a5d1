"""`hyperflow collect --focus DRIFT`: active collection where a trained drift adapts worst.

The uniform store is the session's `local_store` (untrained default target, tiny config: 16
episodes, shards of 4, both formats); the drift is `hyperflow train` on it. The focused store
holds those 16 episodes (collect.focus_prefix) and then 8 episodes chosen from 32 candidates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jobs.collect.focus
from engine.manifest import MANIFEST, Manifest
from engine.record import make_id, record_diff
from engine.stores import read_records
from engine.stream import RecordStream
from hyperflow.config import load_config
from hyperflow.model import load_target, target_id
from jobs.cli import main
from jobs.train.state import check_store

P, M, POOL, START = 16, 8, 4, 1_000_000  # prefix, focused batch, candidates per chosen, start
FOCUS_SETS = ["--set", f"collect.focus_prefix={P}", "--set", "collect.focus_steps=5"]
FOCUS_SETS += ["--set", "collect.focus_score=ratio"]  # forward passes only: fast (gap: below)
SHIFTS = set(load_config("tiny").collect.shifts)


def _snapshot(root: Path) -> dict:
    """path -> (sha256, inode, mtime_ns) of every file under root: 'changes nothing' is strict."""
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        out[f.relative_to(root).as_posix()] = (digest, st.st_ino, st.st_mtime_ns)
    return out


def _ids(store: Path, fmt: str = "wds") -> list[str]:
    return [r.id for r in read_records(store, fmt)]


@pytest.fixture(scope="module")
def drift(local_store, untrained_target, cli, tmp_path_factory) -> Path:
    """A drift trained by `hyperflow train` on the uniform store (200 steps, a few seconds)."""
    out = tmp_path_factory.mktemp("focus") / "drift"
    argv = ["train", "--config", "tiny", "--store", str(local_store["store"])]
    argv += ["--target", str(untrained_target), "--out", str(out)]
    argv += ["--set", "train.steps=200", "--set", "train.checkpoint_every=200"]
    cli(*argv, env={"OMP_NUM_THREADS": "1"})
    return out


@pytest.fixture(scope="module")
def focused(drift, untrained_target, ray_procs, cluster_env, cli, tmp_path_factory) -> dict:
    """The focused store, collected by the CLI on the session's Ray cluster (1 worker:
    start-up dominates; a private local cluster would add its own start-up)."""
    store = tmp_path_factory.mktemp("focus") / "store"
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(store)]
    argv += ["--focus", str(drift), "--episodes", str(M), "--workers", "1", *FOCUS_SETS]
    env = cluster_env("focus")
    proc = cli(*argv, env=env)
    mark = env["HYPERFLOW_TEST_RAY"]
    left = ray_procs.wait_gone(mark)
    ray_procs.end(mark)
    assert not left, f"the driver left processes running: {left}"
    doc = json.loads((store / "focus.json").read_text())
    return {"store": store, "argv": argv, "stdout": proc.stdout, "stderr": proc.stderr, "doc": doc}


def test_focused_store_holds_the_prefix_then_the_chosen(focused, local_store, capsys):
    store, base, doc = focused["store"], local_store["store"], focused["doc"]
    for fmt in ("zarr", "wds"):
        ids = _ids(store, fmt)
        assert len(ids) == len(set(ids)) == P + M, fmt
        # manifest order: the uniform store's records first, so train.max_records=P takes them
        assert ids[:P] == _ids(base, fmt)
        chosen = [int(i.split("-e")[1].split("-")[0]) for i in ids[P:]]
        assert chosen == doc["chosen"] and len(set(chosen)) == M
        assert all(START <= e < START + POOL * M for e in chosen), chosen
    # the prefix shards are the uniform store's shards, byte for byte
    old = {(s.format, s.name): s.objects for s in Manifest.load(base).shards}
    new = {(s.format, s.name): s.objects for s in Manifest.load(store).shards}
    assert {k: new[k] for k in old} == old
    focus = Manifest.load(store).config["focus"]
    assert (focus["prefix"], focus["start"], focus["candidates"]) == (P, START, POOL * M)
    assert focus["chosen"] == doc["chosen_digest"] and focus["episodes"] == M
    assert main(["inspect", str(store), "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == P + M and report["verify"]["ok"]
    assert "shift family" in focused["stdout"] and "chosen vs" in focused["stdout"]


def test_chosen_episodes_are_where_the_drift_is_wrong(focused, drift, untrained_target):
    # measured apart from the score (support loss on an augmented copy): HyperFlow's distance to
    # the bias-tuning endpoint it emulates (the focused store's own trajectories for the chosen,
    # simulated here for the rest) and its effect on the query set's loss
    from hyperflow.adapt.hyperflow import adapted_theta, load_for_target
    from hyperflow.adapt.methods import Adapted, predict
    from hyperflow.bias import get_theta
    from hyperflow.data.episodes import build_episode
    from hyperflow.simulator import BiasTuningSimulator, CollectSpec

    torch.set_num_threads(1)
    store, doc = focused["store"], focused["doc"]
    cfg, model = load_config("tiny"), load_target(untrained_target)
    manifest_cfg = Manifest.load(store).config
    spec = CollectSpec.from_config(cfg, model, str(untrained_target), manifest_cfg["domains"], "c")
    as_stored = json.loads(json.dumps(spec.manifest_config()))
    assert as_stored.items() <= manifest_cfg.items(), "not the spec the store was collected with"
    chosen = set(doc["chosen"])
    others = tuple(e for e in range(START, START + POOL * M) if e not in chosen)
    sim = BiasTuningSimulator(spec, str(untrained_target), None, 0, shards=(others,))
    theta_t = {r.meta["episode_index"]: r.theta[-1] for r in read_records(store, "wds")}
    theta_t.update({r.meta["episode_index"]: r.theta[-1] for r in sim.records(0)})
    net = load_for_target(str(drift), model)
    theta0 = get_theta(model.backbone, model.layout)  # [P]
    error, query = {}, {}
    for e in sorted(chosen | set(others)):
        ep = build_episode(sim.data, sim.episode(e)[0])
        hf = adapted_theta(model, net, ep, 5)  # [P]
        tuned = torch.from_numpy(theta_t[e].astype(np.float32)).to(hf.dtype)
        error[e] = float((hf - tuned).norm() / (tuned - theta0).norm())
        ce = [
            F.cross_entropy(predict(model, ep, Adapted(theta=t)), ep.query_y) for t in (theta0, hf)
        ]
        query[e] = float(ce[1] / ce[0])

    def mean(d, keys):
        return sum(d[e] for e in keys) / len(keys)

    summary = {
        "error": (mean(error, chosen), mean(error, others)),
        "query": (mean(query, chosen), mean(query, others)),
        "score": (doc["chosen_summary"]["mean"], doc["pool_summary"]["mean"]),
    }
    print(summary)
    assert summary["error"][0] > summary["error"][1], summary
    assert summary["query"][0] > summary["query"][1], summary
    assert summary["score"][0] > summary["score"][1], summary


def test_the_gap_score_ranks_where_bias_tuning_beats_the_drift_on_the_query_set(
    drift, untrained_target
):
    # focus_score=gap: support-loss gap to a simulated bias-tuning endpoint. Measured apart from
    # it, on the query set (which the score never sees) and with the simulator's own trajectory:
    # where the gap is large, bias-tuning beats the drift's endpoint by more
    from hyperflow.adapt.hyperflow import adapted_theta
    from hyperflow.adapt.methods import Adapted, predict
    from hyperflow.data.episodes import build_episode
    from hyperflow.focus import FocusScorer
    from hyperflow.simulator import CollectSpec

    torch.set_num_threads(1)
    cfg, model = load_config("tiny"), load_target(untrained_target)
    spec = CollectSpec.from_config(cfg, model, str(untrained_target), ["latin", "greek"], "c")
    kwargs = {"spec": spec, "target_dir": str(untrained_target), "cache_dir": None, "total": 0}
    scorer = FocusScorer(kwargs, str(drift), 5, score="gap")
    candidates = list(range(START, START + 16))
    gap = {r["index"]: r["score"] for r in scorer.score(candidates)}
    sim = scorer.sim
    sim_shard = type(sim)(spec, str(untrained_target), None, 0, shards=(tuple(candidates),))
    tuned = {r.meta["episode_index"]: r.theta[-1] for r in sim_shard.records(0)}
    advantage = {}  # query cross-entropy at the drift's endpoint minus at bias-tuning's
    for e in candidates:
        ep = build_episode(sim.data, sim.episode(e)[0])
        hf = adapted_theta(model, scorer.net, ep, 5)
        bt = torch.from_numpy(tuned[e].astype(np.float32)).to(hf.dtype)
        ce = [F.cross_entropy(predict(model, ep, Adapted(theta=t)), ep.query_y) for t in (hf, bt)]
        advantage[e] = float(ce[0] - ce[1])
    ranked = sorted(candidates, key=lambda e: -gap[e])
    top, bottom = ranked[:8], ranked[8:]
    mean = lambda keys: sum(advantage[e] for e in keys) / len(keys)  # noqa: E731
    assert mean(top) > mean(bottom), (gap, advantage)


def test_candidates_come_from_the_collect_shifts_only(focused):
    episodes = [r.episode for r in read_records(focused["store"], "wds")]
    assert {ep["shift"] for ep in episodes} <= SHIFTS | {None}
    doc = focused["doc"]
    assert set(doc["pool_shifts"]) <= SHIFTS | {"clean"}
    assert sum(doc["chosen_summary"]["shifts"].values()) == M


def test_the_trainer_takes_the_focused_store_and_its_uniform_prefix(
    focused, local_store, untrained_target
):
    # what `hyperflow train` needs of a focused store, checked in-process (whole training runs
    # are the `drift` fixture's and tests/jobs/test_train*.py's): its store check accepts it,
    # its record stream reads every record once, and train.max_records=P reads exactly the
    # uniform store's records, so a drift trained on P of either store sees the same data
    store, model = str(focused["store"]), load_target(untrained_target)
    for fmt in ("zarr", "wds"):
        assert check_store(store, str(untrained_target), model, fmt).config["focus"]
        for n, want in ((0, _ids(focused["store"], fmt)), (P, _ids(local_store["store"], fmt))):
            stream = RecordStream(store, fmt, 0, 1, 4, 0, collated=False, max_records=n)
            got = [r.id for batch in stream for r in batch]
            assert sorted(got) == sorted(want) and len(got) == len(want), (fmt, n)


def test_rerun_resumes_without_rescoring(focused, ray_procs, cluster_env, cli, tmp_path, capsys):
    # the state a kill after the prefix shards leaves: the focused shards uncommitted
    store = tmp_path / "store"
    shutil.copytree(focused["store"], store)
    lost = {s.name for s in Manifest.load(store).shards if s.first_id >= make_id("c", START, 0)}
    assert lost
    manifest = json.loads((store / MANIFEST).read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] not in lost]
    (store / MANIFEST).write_text(json.dumps(manifest))
    for name in lost:
        for fmt in ("zarr", "wds"):
            (store / "commits" / fmt / f"{name}.json").unlink(missing_ok=True)
    focus_before = _snapshot(store)["focus.json"]
    argv = list(focused["argv"])
    argv[argv.index("--out") + 1] = str(store)
    env = cluster_env("focus-resume")
    proc = cli(*argv, env=env)
    mark = env["HYPERFLOW_TEST_RAY"]
    assert not ray_procs.wait_gone(mark)
    ray_procs.end(mark)
    assert "focus: scoring" not in proc.stderr, "the candidates were scored again"
    assert _snapshot(store)["focus.json"] == focus_before
    ref = {r.id: r for r in read_records(focused["store"], "zarr")}
    got = {r.id: r for r in read_records(store, "zarr")}
    assert set(got) == set(ref) and all(record_diff(got[i], ref[i]) == [] for i in ref)
    # and once more: complete, nothing changes, no Ray needed
    before = _snapshot(store)
    assert main(argv) == 0
    assert "is complete" in capsys.readouterr().out
    assert _snapshot(store) == before


def _other_drift(target: Path, out: Path, trained_for: str | None = None, include=None) -> Path:
    """A valid, untrained drift for `target` (or another bias layout), recording `trained_for`."""
    from hyperflow.bias import select_biases
    from hyperflow.drift import DriftConfig, DriftNet, save_drift

    model = load_target(target)
    layout = select_biases(model.backbone, include) if include else model.layout
    net = DriftNet(layout, DriftConfig("small", "target"), model.backbone, model.feature_dim, 5)
    save_drift(net, out, {"target": trained_for or target_id(target)})
    return out


@pytest.mark.parametrize(
    "change, key",
    [("drift", "'focus.drift'"), ("pool", "'focus.candidates'"), ("uniform", "'episodes'")],
)
def test_another_drift_or_setting_on_the_store_is_refused(
    change, key, focused, untrained_target, tmp_path, capsys
):
    store = tmp_path / "store"
    shutil.copytree(focused["store"], store)
    before = _snapshot(store)
    argv = list(focused["argv"])
    argv[argv.index("--out") + 1] = str(store)
    if change == "drift":
        argv[argv.index("--focus") + 1] = str(_other_drift(untrained_target, tmp_path / "d"))
    elif change == "pool":
        argv += ["--set", "collect.focus_pool=2"]
    else:  # the same store without --focus
        i = argv.index("--focus")
        del argv[i : i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different config" in err and key in err, err
    assert _snapshot(store) == before


def test_focus_on_a_uniform_store_is_refused(local_store, drift, capsys):
    store = local_store["store"]
    before = _snapshot(store)
    assert main([*local_store["argv"], "--focus", str(drift), *FOCUS_SETS]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "focus.json" in err, err
    assert _snapshot(store) == before


BAD = {
    "pool-0": (["--set", "collect.focus_pool=0"], ["'collect.focus_pool'", "got 0"]),
    "prefix-negative": (["--set", "collect.focus_prefix=-1"], ["'collect.focus_prefix'", "-1"]),
    "steps-0": (["--set", "collect.focus_steps=0"], ["'collect.focus_steps'", "got 0"]),
    "score-unknown": (["--set", "collect.focus_score=best"], ["'collect.focus_score'", "'best'"]),
    "start-negative": (["--set", "collect.focus_start=-1"], ["'collect.focus_start'", "-1"]),
    "start-below-prefix": (["--set", "collect.focus_start=8"], ["'collect.focus_start'", "got 8"]),
    "missing-dir": (["--focus", "{tmp}/nowhere"], ["--focus", "nowhere", "does not exist"]),
    "no-drift-json": (["--focus", "{tmp}"], ["no drift checkpoint", "drift.json"]),
    "other-target": (["--focus", "{other_target}"], ["--focus", "trained for target 0000"]),
    "other-layout": (["--focus", "{other_layout}"], ["--focus", "bias layout"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_focus_input_is_refused_before_anything_is_written(
    case, drift, untrained_target, tmp_path, capsys
):
    extra, expected = BAD[case]
    paths = {"tmp": tmp_path, "other_target": tmp_path / "t", "other_layout": tmp_path / "l"}
    if case == "other-target":
        _other_drift(untrained_target, paths["other_target"], trained_for="0" * 16)
    if case == "other-layout":
        _other_drift(untrained_target, paths["other_layout"], include=["layer1.*.bias"])
    out = tmp_path / "store"
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)]
    argv += ["--focus", str(drift), *FOCUS_SETS, *[x.format(**paths) for x in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, f"{text!r} not in stderr: {err}"
    assert not out.exists()


def test_failed_scoring_writes_nothing(drift, untrained_target, tmp_path, monkeypatch):
    def lost(*args, **kwargs):
        raise RuntimeError("every scoring actor died")

    monkeypatch.setattr(jobs.collect.focus, "connect", lambda address: None)
    monkeypatch.setattr(jobs.collect.focus, "score_episodes", lost)
    out = tmp_path / "store"
    argv = ["collect", "--config", "tiny", "--target", str(untrained_target), "--out", str(out)]
    with pytest.raises(RuntimeError, match="every scoring actor died"):
        main([*argv, "--focus", str(drift), *FOCUS_SETS])
    assert not out.exists()


def test_explicit_shards_simulate_what_ranges_do(untrained_target):
    from hyperflow.simulator import BiasTuningSimulator, CollectSpec

    torch.set_num_threads(1)
    cfg, model = load_config("tiny"), load_target(untrained_target)
    spec = CollectSpec.from_config(cfg, model, str(untrained_target), ["latin", "greek"], "c")
    ranges = BiasTuningSimulator(spec, str(untrained_target), None, 8)
    explicit = BiasTuningSimulator(
        spec, str(untrained_target), None, 8, shards=((9,), (4, 5, 6, 7))
    )
    a, b = ranges.records(1), explicit.records(1)
    assert [r.id for r in a] == [make_id("c", e, 0) for e in range(4, 8)]
    assert all(record_diff(x, y) == [] for x, y in zip(a, b, strict=True))
    assert (ranges.shards(), explicit.shards()) == (2, 2)
