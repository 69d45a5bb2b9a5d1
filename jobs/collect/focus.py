"""`hyperflow collect --focus DRIFT_DIR`: the data engine's loop, collection where a drift is wrong.

The store holds the uniform episodes 0..P-1 (collect.focus_prefix; in shards laid out as a
uniform store lays them, so with P = the drift's training episodes they are that store's
shards, record for record) and then M episodes chosen from the fresh candidates [S, S + pool M)
(collect.focus_start, collect.focus_pool): the M on which the drift falls furthest short of
bias-tuning (collect.focus_score; hyperflow.focus, scored on Ray actors by
jobs/collect/focus_scoring.py).
STORE/focus.json holds the choice, written before the manifest, so a re-run reads it instead of
rescoring; the manifest config's "focus" entry names the drift (digest), the settings and a
digest of the chosen list, so another drift or setting on the same store is refused as another
config.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from tqdm import tqdm

from engine.manifest import MANIFEST, Manifest, first_difference
from engine.pool import connect
from engine.record import make_id
from hyperflow.adapt.hyperflow import load_for_target
from hyperflow.drift.io import META, WEIGHTS, read_drift_meta
from hyperflow.errors import UserError
from hyperflow.focus import choose, summarize
from hyperflow.simulator import IMPLIED_BY_OLDER_STORES, shard_episodes
from jobs.collect.focus_scoring import score_episodes
from jobs.common import source

FOCUS = "focus.json"
FORMAT = "hyperflow-focus/1"


@dataclass
class FocusPlan:
    config: dict  # the manifest config, its "focus" entry included
    shards: tuple[tuple[int, ...], ...]  # episode indices per shard: prefix, then the chosen
    doc: dict  # focus.json


def check_drift(focus: str, spec, model) -> tuple[str, str]:
    """(URL, digest) of the drift at --focus; UserError naming it unless it loads for this
    target (the same weights, not only the same bias layout)."""
    loc = source(focus, "--focus")
    meta = read_drift_meta(loc.url)
    trained_for = (meta.get("extra") or {}).get("target")
    if trained_for != spec.target:
        raise UserError(
            f"--focus {focus!r} was trained for target {trained_for}, not for --target "
            f"({spec.target}): train a drift on a store of this target"
        )
    try:
        load_for_target(loc.url, model)
    except UserError as e:
        raise UserError(f"--focus {focus!r}: {e}") from None
    except Exception as e:  # a torn or foreign weights file
        msg = f"--focus {focus!r}: cannot load the drift: {type(e).__name__}: {e}"
        raise UserError(msg) from None
    digest = hashlib.sha256(loc.read_bytes(META) + loc.read_bytes(WEIGHTS)).hexdigest()[:16]
    return loc.url, digest


def _digest(chosen: list[int]) -> str:
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]


def _check_ids(spec, prefix: int, start: int, n: int) -> None:
    # shards must cover disjoint id ranges (the manifest refuses overlaps), and ids sort as
    # strings: the candidates' ids must sort apart from the prefix's (e.g. e150000 > e1000000);
    # start >= prefix is the config schema's (hyperflow/config)
    if not prefix:
        return
    last = spec.inits - 1
    ids = [(make_id(spec.run, e, 0), make_id(spec.run, e, last)) for e in range(prefix)]
    lo, hi = min(a for a, _ in ids), max(b for _, b in ids)
    ids = [(make_id(spec.run, e, 0), make_id(spec.run, e, last)) for e in range(start, start + n)]
    c_lo, c_hi = min(a for a, _ in ids), max(b for _, b in ids)
    if c_lo <= hi and lo <= c_hi:
        raise UserError(
            f"collect.focus_start={start}: the candidates' record ids ({c_lo}..{c_hi}) sort "
            f"among the prefix's ({lo}..{hi}); choose a start whose ids sort after them"
        )


def _refuse(url: str, key: str, why: str) -> UserError:
    # worded as engine.manifest words a config change, the key included
    return UserError(
        f"store {url} was written with a different config: key {key!r} differs ({why}); "
        "use a new store location"
    )


def plan_focus(
    focus: str, out, spec, cc, config: dict, model, sim_kwargs: dict, workers: int, address
) -> FocusPlan:
    """Read STORE/focus.json, or score the candidates on `workers` Ray actors at `address`
    (simulator built from `sim_kwargs`) and write it. `config`: the uniform store's manifest
    config with "episodes" = M, the focused batch; refusals name the differing key."""
    m, prefix, start = config["episodes"], cc.focus_prefix, cc.focus_start
    n = cc.focus_pool * m
    _check_ids(spec, prefix, start, n)
    drift_url, drift_id = check_drift(focus, spec, model)
    request = {
        "drift": drift_id,
        "prefix": prefix,
        "start": start,
        "pool": cc.focus_pool,
        "candidates": n,
        "steps": cc.focus_steps,
        "score": cc.focus_score,
        "episodes": m,
    }
    config = json.loads(json.dumps({**config, "episodes": prefix + m, "focus": request}))
    if out.exists(FOCUS):
        doc = json.loads(out.read_bytes(FOCUS))
        key = first_difference(doc.get("config"), config)
        if doc.get("format") != FORMAT or key is not None:
            raise _refuse(out.url, key or "format", f"as {out.child(FOCUS).url} records")
        if _digest(doc["chosen"]) != doc["chosen_digest"]:
            raise UserError(f"{out.child(FOCUS).url} is inconsistent: chosen list vs its digest")
    elif out.exists(MANIFEST):  # focus.json goes first: this store was not made by this command
        old = {**IMPLIED_BY_OLDER_STORES, **Manifest.load(out).config}
        key = first_difference(old, config) or "focus"
        raise _refuse(out.url, key, f"it holds no {FOCUS}")
    else:
        connect(address)
        doc = _score(out, spec, config, drift_url, cc, sim_kwargs, workers)
    chosen = doc["chosen"]
    prefix_shards = [
        tuple(shard_episodes(spec, i, prefix)) for i in range(math.ceil(prefix / spec.shard_size))
    ]
    ss = spec.shard_size
    focus_shards = [tuple(chosen[j : j + ss]) for j in range(0, len(chosen), ss)]
    config = {**config, "focus": {**config["focus"], "chosen": doc["chosen_digest"]}}
    return FocusPlan(config, tuple(prefix_shards + focus_shards), doc)


def _score(out, spec, config: dict, drift_url: str, cc, sim_kwargs: dict, workers: int) -> dict:
    # score every candidate, keep the M worst adapted, write focus.json (before any shard)
    focus = config["focus"]
    start, n = focus["start"], focus["candidates"]
    scorer = {"simulator_kwargs": sim_kwargs, "drift_dir": drift_url}
    scorer.update(steps=focus["steps"], threads=max(1, int(cc.cpus_per_worker)))
    scorer.update(score=focus.get("score", "ratio"))
    with tqdm(total=n, desc="focus: scoring", unit="episode") as bar:
        rows = score_episodes(
            range(start, start + n),
            scorer,
            workers,
            cc.cpus_per_worker,
            cc.gpus_per_worker,
            cc.placement_timeout,
            cc.replace_fraction,
            progress=bar.update,
        )
    picked = choose({e: r["score"] for e, r in rows.items()}, focus["episodes"])
    # shard order: ids ascending as strings, so consecutive shards cover disjoint id ranges
    chosen = sorted(picked, key=lambda e: make_id(spec.run, e, 0))
    pool = [rows[e] for e in range(start, start + n)]
    doc = {
        "format": FORMAT,
        "config": config,
        "drift_dir": drift_url,
        "chosen": chosen,
        "chosen_digest": _digest(chosen),
        "chosen_scores": [rows[e]["score"] for e in chosen],
        "chosen_summary": summarize([rows[e] for e in chosen]),
        "pool_summary": summarize(pool),
        "pool_scores": [r["score"] for r in pool],  # candidates start, start + 1, ...
        "pool_shifts": [r["shift"] for r in pool],
    }
    out.write_bytes(FOCUS, json.dumps(doc, indent=1).encode())
    return doc


def summary(doc: dict) -> str:
    """Where the drift was wrong: scores and shift families of the chosen vs the whole pool."""
    c, p = doc["chosen_summary"], doc["pool_summary"]
    start, chosen = doc["config"]["focus"]["start"], set(doc["chosen"])
    rest = [s for i, s in enumerate(doc["pool_scores"]) if start + i not in chosen]
    others = f", {sum(rest) / len(rest):.4f} the others" if rest else ""
    what = {"ratio": "L(theta_HF)/L(theta_0)", "gap": "L(theta_HF) - L(theta_BT)"}
    score = what[doc["config"]["focus"].get("score", "ratio")]
    lines = [
        f"focus: chose {c['n']} of {p['n']} candidates where the drift adapts worst; support "
        f"loss {score} mean {c['mean']:.4f} chosen vs {p['mean']:.4f} pool{others}",
        f"  {'shift family':<14}{'chosen':>14}{'pool':>14}",
    ]
    for fam in sorted(set(p["shifts"]) | set(c["shifts"])):
        a, b = c["shifts"].get(fam, 0), p["shifts"].get(fam, 0)
        share = [f"{k} ({k / n:.0%})" for k, n in ((a, c["n"]), (b, p["n"]))]
        lines.append(f"  {fam:<14}{share[0]:>14}{share[1]:>14}")
    return "\n".join(lines)
