"""Concurrent IPAM never hands out one address, or overlapping pools, twice: threads on
two Ipam objects over one store, and processes on one SQLite file."""

from __future__ import annotations

import ipaddress
import multiprocessing
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cnm.errors import Conflict
from cnm.ipam import Ipam
from cnm.store.base import Store
from cnm.store.memory import MemoryStore
from cnm.store.sqlite import SQLiteStore

THREADS = 8
PER_THREAD = 100


@pytest.fixture(autouse=True)
def interleave() -> None:
    """Switch threads every few microseconds instead of every 5 ms, so that reads and
    compare-and-swaps of different threads really interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    made = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "ipam.db")
    yield made
    made.close()


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Start ``count`` threads together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            barrier.wait()
            work(slot)
        except BaseException as exc:  # noqa: BLE001 - re-raised below in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_threads_on_two_ipam_objects_share_one_store(store: Store) -> None:
    ipams = (Ipam(store), Ipam(store))
    pool = ipams[0].request_pool(subnet="10.210.0.0/16")
    results: list[list[str]] = [[] for _ in range(THREADS)]

    def work(slot: int) -> None:
        for _ in range(PER_THREAD):
            results[slot].append(str(ipams[slot % 2].request_address(pool.id)))

    run_threads(THREADS, work)
    everything = [a for r in results for a in r]
    assert len(everything) == len(set(everything)) == THREADS * PER_THREAD
    assert {str(a) for a in ipams[1].allocated(pool.id)} == set(everything)


def test_threads_requesting_and_releasing_never_share_an_address(store: Store) -> None:
    """Each thread keeps every other address it gets and releases the rest as it goes,
    in a pool small enough to wrap: what the threads hold is disjoint and is the pool."""
    ipams = (Ipam(store), Ipam(store))
    pool = ipams[0].request_pool(subnet="10.213.0.0/24")  # 254 addresses, 400 kept at most
    kept: list[set[str]] = [set() for _ in range(THREADS)]

    def work(slot: int) -> None:
        ipam = ipams[slot % 2]
        for n in range(50):
            got = str(ipam.request_address(pool.id))
            assert not any(got in k for k in kept), f"{got} handed out while held"
            if n % 2:
                kept[slot].add(got)
            else:
                ipam.release_address(pool.id, got)

    run_threads(THREADS, work)
    held = set().union(*kept)
    assert len(held) == THREADS * 25
    assert {str(a) for a in ipams[0].allocated(pool.id)} == held


def test_concurrent_overlapping_pool_requests_have_one_winner(store: Store) -> None:
    """Eight nested subnets (every pair overlaps), requested at once: one wins, seven get
    a Conflict; ten rounds to give the race a chance."""
    for round_ in range(10):
        outcomes: list[str] = []

        def work(slot: int, round_: int = round_, outcomes: list[str] = outcomes) -> None:
            subnet = f"10.{100 + round_}.0.0/{16 + slot}"
            try:
                Ipam(store).request_pool(subnet=subnet)
                outcomes.append("won")
            except Conflict:
                outcomes.append("conflict")

        run_threads(THREADS, work)
        assert sorted(outcomes) == ["conflict"] * (THREADS - 1) + ["won"]
    assert len(Ipam(store).list_pools()) == 10


def test_concurrent_default_pools_are_distinct(store: Store) -> None:
    got: list[ipaddress.IPv4Network] = []
    run_threads(THREADS, lambda slot: got.append(Ipam(store).request_pool().subnet))
    assert sorted(map(str, got)) == sorted(f"172.{n}.0.0/16" for n in range(17, 17 + THREADS))


def test_shared_requests_and_releases_keep_count(store: Store) -> None:
    """Identical shared requests race with releases: the pool lives while anyone holds
    it, and the last release frees it."""
    ipam = Ipam(store)
    ipam.request_pool(subnet="10.214.0.0/24", shared=True)

    def work(slot: int) -> None:
        for _ in range(20):
            pool = Ipam(store).request_pool(subnet="10.214.0.0/24", shared=True)
            Ipam(store).release_pool(pool.id)

    run_threads(THREADS, work)
    assert [p.id for p in ipam.list_pools()] == ["local/10.214.0.0/24"]
    ipam.release_pool("local/10.214.0.0/24")
    assert ipam.list_pools() == []


# --- processes on one SQLite file --------------------------------------------------------


def _allocate_in_threads(path: str, pool_id: str, threads: int, count: int,
                         queue: multiprocessing.Queue) -> None:
    """A child process: ``threads`` threads, each with its own store connection."""
    results: list[list[str]] = [[] for _ in range(threads)]

    def work(slot: int) -> None:
        with SQLiteStore(path) as store:
            ipam = Ipam(store)
            results[slot] = [str(ipam.request_address(pool_id)) for _ in range(count)]

    try:
        run_threads(threads, work)
        queue.put([a for r in results for a in r])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    """2 processes x 4 threads x 100 requests on one pool: 800 distinct addresses."""
    path = str(tmp_path / "ipam.db")
    with SQLiteStore(path) as store:
        pool = Ipam(store).request_pool(subnet="10.211.0.0/16")
    ctx = multiprocessing.get_context("spawn")  # no inherited locks or threads
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_threads,
                         args=(path, pool.id, THREADS // 2, PER_THREAD, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        got = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(isinstance(g, list) for g in got), got
    everything = got[0] + got[1]
    assert len(everything) == len(set(everything)) == THREADS * PER_THREAD
    with SQLiteStore(path) as store:
        assert {str(a) for a in Ipam(store).allocated(pool.id)} == set(everything)
