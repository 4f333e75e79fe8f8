"""A raw-bytes table's local store, read and written a batch at a time, per partition (the
positions and the reservations tables).

Faust's table API reads one key at a time (and on a miss probes the RocksDB of *every* assigned
partition) and writes one key at a time with a changelog record each. The fold knows each key's
partition (the input event's), so it reads a batch of keys with one multi-get per partition and
writes each touched key once per batch with one write batch per partition. The changelog record
for each write is produced by the caller (:mod:`streams.delivery`): the pair is the table write.

Faust still owns the table: it opens and closes partition stores on rebalance, restores them
from the changelog, and serves standbys. This module touches only the partition stores Faust
opened, through the store's per-partition handle (RocksDB) or dict (memory store).

Limits: relies on two internals of faust-streaming's stores (``_db_for_partition`` of the
RocksDB store, ``data``/``_key_partition`` of the memory store), covered by the integration
tests for both stores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import rocksdict
from faust.stores import memory, rocksdb
from faust.types import TP, TableT

from state.position import OpenPosition


class PartitionStore:
    """Batch reads and writes of one table's partition stores (see the module docstring)."""

    def __init__(self, table: TableT) -> None:
        self.table = table

    @property
    def _store(self) -> Any:
        return self.table.data

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        store = self._store
        if isinstance(store, rocksdb.Store):
            return list(store._db_for_partition(partition)[list(keys)])
        if isinstance(store, memory.Store):
            data = store.data
            return [data.get(key) for key in keys]
        raise TypeError(f"unsupported table store {type(store).__name__}")

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        store = self._store
        if isinstance(store, rocksdb.Store):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items:
                batch.put(key, value)
            store._db_for_partition(partition).write(batch)
        elif isinstance(store, memory.Store):
            store.data.update(items)
            store._key_partition.update((key, partition) for key, _ in items)
        else:
            raise TypeError(f"unsupported table store {type(store).__name__}")

    def delete_many(self, partition: int, keys: Sequence[bytes]) -> None:
        """Remove ``keys`` from one partition's store (the caller produces the tombstones)."""
        store = self._store
        if isinstance(store, rocksdb.Store):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key in keys:
                batch.delete(key)
            store._db_for_partition(partition).write(batch)
        elif isinstance(store, memory.Store):
            for key in keys:
                store.data.pop(key, None)
                store._key_partition.pop(key, None)
        else:
            raise TypeError(f"unsupported table store {type(store).__name__}")

    def items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of one partition (for rebuilding an in-memory index)."""
        store = self._store
        if isinstance(store, rocksdb.Store):
            offset_key = store.offset_key
            db = store._db_for_partition(partition)
            return [(k, v) for k, v in db.items() if k != offset_key]
        if isinstance(store, memory.Store):
            owner = store._key_partition
            return [(k, v) for k, v in store.data.items() if owner.get(k) == partition]
        raise TypeError(f"unsupported table store {type(store).__name__}")

    def approximate_keys(self) -> int | None:
        """Keys in the assigned partitions' stores (RocksDB's estimate), or None if unknown."""
        store = self._store
        if isinstance(store, rocksdb.Store):
            return sum(
                db.property_int_value("rocksdb.estimate-num-keys") or 0
                for db in list(store._dbs.values())
            )
        if isinstance(store, memory.Store):
            return len(store.data)
        return None

    @property
    def changelog(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def mark_changelog_applied(self, offsets: dict[str, dict[int, int]]) -> None:
        """Remember, per partition, the changelog offset the local store contains up to, so that
        recovery after a restart replays only the changelog past it (RocksDB; no-op in memory).
        ``offsets``: changelog topic -> partition -> offset; other tables' topics are ignored."""
        store = self._store
        topic = self.changelog
        if not isinstance(store, rocksdb.Store) or topic not in offsets:
            return
        for partition, offset in offsets[topic].items():
            if partition in store._dbs:  # not revoked meanwhile
                store.set_persisted_offset(TP(topic, partition), offset)


class PositionCache:
    """Open positions kept between batches (LRU, at most ``limit`` keys), so a key folded again
    soon is not re-read and re-decoded from the store.

    Valid for one consumer generation only: :meth:`for_generation` empties it after any
    rebalance, because Faust may then have restored partition stores from the changelog. The
    caller puts back only positions it wrote, and drops any it folded but did not write.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.generation: int | None = None
        self._entries: OrderedDict[bytes, tuple[OpenPosition, dict[str, int]]] = OrderedDict()

    def for_generation(self, generation: int) -> None:
        if generation != self.generation:
            self._entries.clear()
            self.generation = generation

    def take(self, key: bytes) -> tuple[OpenPosition, dict[str, int]] | None:
        return self._entries.pop(key, None)

    def put(self, key: bytes, position: OpenPosition, offsets: dict[str, int]) -> None:
        entries = self._entries
        entries[key] = (position, offsets)
        while len(entries) > self.limit:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
