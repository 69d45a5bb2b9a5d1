"""`hyperflow collect`: Ray actors simulate bias-tuning trajectories into a sharded store.

The store is a fixed list of shards (episode index ranges). The driver skips shards already in the
manifest, deletes leftovers of uncommitted ones, hands the rest to actors with bounded in-flight
work, and commits each shard to manifest.json as its writer reports it. Re-running the same command
on a store therefore completes it; a store from another config is refused. With --focus, the
store's episodes are chosen where a trained drift network adapts worst (jobs/collect/focus.py).
"""

from __future__ import annotations

import argparse
import json
import math

from tqdm import tqdm

from engine.collect import collect
from engine.manifest import MANIFEST
from engine.pool import check_reachable, connect, resolve_address
from engine.record import make_id
from engine.storage import Location
from engine.stores import STORES, open_store, remove_uncommitted, shard_name
from hyperflow.config import load_config
from hyperflow.data import load_dataset
from hyperflow.data.episodes import sample_episode
from hyperflow.errors import UserError
from hyperflow.model import load_target
from hyperflow.simulator import (
    IMPLIED_BY_OLDER_STORES,
    BiasTuningSimulator,
    CollectSpec,
    shard_episodes,
)
from jobs.collect.focus import plan_focus, summary
from jobs.common import add_config_args, output, positive_int, source

# collect.format -> store formats written: each of engine.stores.STORES, or all of them
FORMATS = {**{f: [f] for f in STORES}, "both": list(STORES)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--target", required=True, help="path or URL written by `hyperflow pretrain`")
    p.add_argument(
        "--out",
        required=True,
        help="store: a local directory or a URL such as s3://bucket/prefix (created, or "
        "resumed; a store of fewer episodes that fill whole shards is grown to --episodes, its "
        "records kept: they are the first records of the larger store)",
    )
    p.add_argument(
        "--episodes",
        type=positive_int,
        help="episodes (default: collect.episodes); with --focus the new focused batch M, "
        "stored after the collect.focus_prefix uniform ones",
    )
    p.add_argument(
        "--focus",
        metavar="DRIFT_DIR",
        help="active collection: a `hyperflow train` output for this target; collects the M "
        "of collect.focus_pool*M fresh candidate episodes where its HyperFlow falls "
        "furthest short of bias-tuning (collect.focus_score; scored on Ray, kept in "
        "STORE/focus.json)",
    )
    p.add_argument("--format", choices=sorted(FORMATS), help="store format (default: config's)")
    p.add_argument("--workers", type=positive_int, help="Ray actors (default: the config's)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    p.add_argument("--run", default="c", help="record id prefix (letters, digits, - or _)")


def run(args: argparse.Namespace) -> None:
    # config
    cfg = load_config(args.config, args.set)
    cc, ec = cfg.collect, cfg.episodes
    episodes = args.episodes or cc.episodes  # every number and name checked by the schema
    formats = FORMATS[args.format or cc.format]
    workers = args.workers or cc.workers
    try:
        make_id(args.run, 0, 0)  # the actors would fail on it much later
    except ValueError as e:
        raise UserError(f"--run: {e}") from None
    address = resolve_address(args.address)
    if address is not None:  # before the store is created: a typo must not leave one behind
        check_reachable(address)
    target = source(args.target, "--target")
    out = output(args.out, create=False)  # checked before anything is written there

    # setup: validate everything before the store or Ray is touched
    model = load_target(target.url)
    data = load_dataset(
        cfg.data.dataset, model.cfg.image_size, model.cfg.channels, cfg.data.cache_dir
    )
    domains = cc.domains or data.names("base")
    for name in domains:  # raises naming the domain if it has too few classes or images
        if name not in data.domains:
            raise UserError(f"collect domain {name!r} not in dataset ({data.names()})")
        sample_episode(data.domains[name], 0, ec.way, ec.shot, ec.query)
    spec = CollectSpec.from_config(cfg, model, target.url, domains, args.run)
    config = {**spec.manifest_config(), "episodes": episodes}
    sim_kwargs = {
        "spec": spec,
        "target_dir": target.url,  # absolute path or URL: every node reads it there
        "cache_dir": cfg.data.cache_dir,
        "total": episodes,
    }
    focus = None
    if args.focus:  # scores candidates on Ray (or reads STORE/focus.json) before the store opens
        focus = plan_focus(args.focus, out, spec, cc, config, model, sim_kwargs, workers, address)
        config, episodes = focus.config, focus.config["episodes"]
        sim_kwargs.update(total=episodes, shards=focus.shards)
    shards = focus.shards if focus else None
    grown_from = None if focus else _grown_from(out, episodes, cc.shard_size)
    grows = "episodes" if grown_from is not None else None
    manifest = open_store(out, config, formats, IMPLIED_BY_OLDER_STORES, grows)
    if grown_from is not None:
        print(f"growing store {out.url} from {grown_from} to {episodes} episodes")
    removed = remove_uncommitted(out)
    if removed:
        print(f"removed {len(removed)} uncommitted leftovers: {', '.join(removed[:4])}")
    n_shards = len(shards) if shards is not None else math.ceil(episodes / cc.shard_size)
    todo = [
        i for i in range(n_shards) if not all(manifest.committed(shard_name(i), f) for f in formats)
    ]
    if not todo:
        print(f"store {out.url} is complete: {n_shards} shards, {episodes * cc.inits} trajectories")
        if focus:
            print(summary(focus.doc))
        return
    connect(address)
    writer = {
        "simulator": BiasTuningSimulator,
        "simulator_kwargs": sim_kwargs,
        "store": out.url,
        "formats": formats,
        "theta_dtype": cc.theta_dtype,
        "theta_encoding": cc.theta_encoding,
        "threads": max(1, int(cc.cpus_per_worker)),
    }

    # loop
    done = sorted(set(range(n_shards)) - set(todo))
    done_before = sum(len(shard_episodes(spec, i, episodes, shards)) for i in done) * cc.inits
    total = episodes * cc.inits
    with tqdm(total=total, initial=done_before, desc="collect", unit="traj") as bar:
        stats = collect(
            manifest,
            todo,
            writer,
            workers,
            cc.cpus_per_worker,
            cc.gpus_per_worker,
            progress=lambda n, _seconds: bar.update(n),
            placement_timeout=cc.placement_timeout,
            replace_fraction=cc.replace_fraction,
        )
    print(
        f"collected {stats.trajectories} trajectories in {stats.seconds:.1f} s "
        f"({stats.trajectories / stats.seconds:.2f} traj/s, {workers} workers); writing took "
        f"{100 * stats.write_fraction:.1f}% of worker time; actors replaced: {stats.replaced}"
    )
    print(
        f"store {out.url}: {len(manifest.shards)} shards, formats {formats}; "
        f"see `hyperflow inspect {out.url}`"
    )
    if focus:
        print(summary(focus.doc))


def _grown_from(out: Location, episodes: int, shard_size: int) -> int | None:
    # the episodes of the store at `out` if a larger one can extend it (open_store then checks
    # that nothing else of its config differs), else None. Episode e's content depends on e
    # alone, so its shards are those of the larger store, provided the last one is full (a
    # partial last shard would hold fewer episodes than the grown layout's)
    if not out.exists(MANIFEST):
        return None
    # manifest.json's config alone: open_store loads the store (and lists its commits) next
    old = json.loads(out.read_bytes(MANIFEST)).get("config", {}).get("episodes")
    if not isinstance(old, int) or old >= episodes:
        return None  # equal: a resume; fewer: refused as a different config by open_store
    if old % shard_size:
        raise UserError(
            f"store {out.url} holds {old} episodes, not a multiple of collect.shard_size="
            f"{shard_size}, so it cannot grow to --episodes {episodes}: its last shard would "
            "differ from the larger store's; collect into a new location"
        )
    return old
