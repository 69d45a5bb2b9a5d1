"""The data engine: trajectory records, their stores, and streaming them to training.

engine.record      TrajectoryRecord, make_id, validate_record, record_diff, synthetic_records
engine.manifest    ShardInfo, Manifest (manifest.json: committed shards, config, refuse-to-mix)
engine.stores      STORES registry ("zarr", "wds"), open_store, write_shard, read_shard,
                   read_records, open_shard, remove_uncommitted, shard_name
engine.checksum    sha256_path, check_shard, verify
engine.inspect     inspect_store, format_report, storage_report
engine.stream      epoch_plan, RecordStream, collate (DDP ranks x DataLoader workers)

Nothing is imported here, so `import engine.record` stays light (no torch, no zarr).
"""
