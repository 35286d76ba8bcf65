"""Concurrent allocation never hands out one address twice: threads and processes."""

from __future__ import annotations

import multiprocessing
import threading

from cnm.ipam import Ipam
from cnm.store.memory import MemoryStore
from cnm.store.sqlite import SQLiteStore


def test_threads_on_two_ipam_objects_share_one_store() -> None:
    store = MemoryStore()
    first, second = Ipam(store), Ipam(store)
    pool = first.request_pool(subnet="10.210.0.0/16")
    results: list[list[str]] = [[] for _ in range(8)]

    def work(slot: int) -> None:
        ipam = first if slot % 2 else second
        for _ in range(100):
            results[slot].append(str(ipam.request_address(pool.id)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    everything = [a for r in results for a in r]
    assert len(everything) == 800 and len(set(everything)) == 800


def _allocate(path: str, pool_id: str, count: int, queue: multiprocessing.Queue) -> None:
    ipam = Ipam(SQLiteStore(path))
    queue.put([str(ipam.request_address(pool_id)) for _ in range(count)])


def test_two_processes_on_one_sqlite_file(tmp_path) -> None:
    path = str(tmp_path / "ipam.db")
    pool = Ipam(SQLiteStore(path)).request_pool(subnet="10.211.0.0/16")
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_allocate, args=(path, pool.id, 150, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    everything = got[0] + got[1]
    assert len(everything) == 300 and len(set(everything)) == 300


def test_concurrent_overlapping_pool_requests_have_one_winner() -> None:
    store = MemoryStore()
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def work(i: int) -> None:
        barrier.wait()
        try:
            Ipam(store).request_pool(subnet=f"10.212.{i}.0/24" if i % 2 else "10.212.0.0/16")
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    pools = Ipam(store).list_pools()
    nets = [p.subnet for p in pools]
    assert all(not a.overlaps(b) for a in nets for b in nets if a is not b)
    assert outcomes.count("ok") == len(pools)
