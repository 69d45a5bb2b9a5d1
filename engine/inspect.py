"""What is in a store (`hyperflow inspect`), and what a record costs in each format."""

import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from engine.checksum import verify_shards
from engine.errors import UserError
from engine.manifest import Manifest, config_hash
from engine.record import THETA_DTYPES, TrajectoryRecord
from engine.stores import STORES, open_store, read_shard, write_shard
from engine.stores.encoding import THETA_ENCODINGS


def inspect_store(root, verify: bool = False) -> dict:
    """Counts, bytes and per-domain records of a store; with verify, re-hash every shard.

    `records` and `domains` count distinct records (from the format holding most of them);
    `bytes` and `bytes_per_record` count every format's copy; `per_format` splits them.
    """
    m = Manifest.load(root)
    if not m.shards:
        raise UserError(f"store {m.root} has no committed shards")
    per = {}
    for fmt in m.formats:
        ss = m.shards_of(fmt)
        n, b = sum(s.records for s in ss), sum(s.bytes for s in ss)
        per[fmt] = {"records": n, "shards": len(ss), "bytes": b, "bytes_per_record": b / max(n, 1)}
    primary = max(m.formats, key=lambda f: per[f]["records"])  # ties -> first listed
    domains = Counter()
    for s in m.shards_of(primary):
        domains.update(s.domains)
    total = sum(p["bytes"] for p in per.values())
    out = {
        "records": per[primary]["records"],
        "shards": len(m.shards),
        "bytes": total,
        "bytes_per_record": total / per[primary]["records"],
        "domains": dict(sorted(domains.items())),
        "config": m.config,
        "config_hash": config_hash(m.config),
        "formats": m.formats,
        "per_format": per,
    }
    if verify:
        problems = verify_shards(m.loc, m.shards)
        bad = sorted(p for p, msgs in problems.items() if msgs)
        out["verify"] = {
            "ok": not bad,
            "bad_shards": bad,
            "problems": [msg for p in bad for msg in problems[p]],
        }
    return out


def format_report(d: dict) -> str:
    """Human-readable text of an inspect_store dict."""
    lines = [
        f"{d['records']} records in {d['shards']} shards, formats {', '.join(d['formats'])}, "
        f"{d['bytes'] / 2**20:.1f} MiB ({d['bytes_per_record'] / 1024:.1f} KiB/record)",
        f"config_hash {d['config_hash']}",
    ]
    for fmt, p in d["per_format"].items():
        lines.append(
            f"  {fmt:5s} {p['records']:8d} records {p['shards']:6d} shards "
            f"{p['bytes'] / 2**20:10.1f} MiB {p['bytes_per_record'] / 1024:8.1f} KiB/record"
        )
    lines.append("domains:")
    lines += [f"  {name:20s} {n:8d}" for name, n in d["domains"].items()]
    if "verify" in d:
        v = d["verify"]
        lines.append("verify: OK" if v["ok"] else f"verify: FAILED, {len(v['bad_shards'])} bad:")
        lines += [f"  {msg}" for msg in v["problems"]]
    return "\n".join(lines)


def _raw_float32_bytes(r: TrajectoryRecord) -> int:
    return 4 * r.theta.size + r.loss.nbytes + r.support.nbytes + r.labels.nbytes


def storage_report(records: list[TrajectoryRecord]) -> dict:
    """Bytes per record, write ms/record and read records/s for format x dtype x encoding.

    All records go into one shard per combination, in a temporary store. `raw_float32` is
    the in-memory size of the arrays with theta as float32; `ratio` is relative to it.
    """
    raw = sum(_raw_float32_bytes(r) for r in records) / len(records)
    out = {"records": len(records), "raw_float32_bytes_per_record": raw, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in STORES:
            res = out["formats"][fmt] = {}
            for dtype in THETA_DTYPES:
                recs = [replace(r, theta=r.theta.astype(dtype)) for r in records]
                for enc in THETA_ENCODINGS:
                    root = Path(tmp) / f"{fmt}-{dtype}-{enc}"
                    open_store(root, {"storage_report": True}, [fmt])
                    t0 = time.perf_counter()
                    info = write_shard(root, fmt, "shard-000000", recs, dtype, enc)
                    t1 = time.perf_counter()
                    n = sum(1 for _ in read_shard(root, fmt, "shard-000000"))
                    t2 = time.perf_counter()
                    res[f"{dtype}/{enc}"] = {
                        "bytes_per_record": info.bytes / n,
                        "ratio": info.bytes / n / raw,
                        "write_ms_per_record": 1e3 * (t1 - t0) / n,
                        "read_records_per_s": n / (t2 - t1),
                    }
    return out
