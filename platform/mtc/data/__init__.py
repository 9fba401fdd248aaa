"""Structures in, Parquet graph shards out: readers, graph builder, shard format, Ray Data pipeline."""
