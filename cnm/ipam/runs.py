"""A set of address offsets kept as sorted runs ``[[first, last], ...]`` (inclusive).

libnetwork keeps a pool's addresses in a run-length encoded bitmap (``bitseq``) for the
same reason: serial allocation fills a pool from its start, so a thousand addresses handed
out in order are one run, and a record in the store stays a few bytes however big the
pool. Scattered static addresses cost one run each, never more than a plain list would.

Invariant: runs are sorted, disjoint and never adjacent (``[1, 3], [4, 6]`` is always
kept as ``[1, 6]``), so the address after a run is free. Every lookup is a bisection.

In the store the runs are one string, ``"1-40,77,90-95"``: readable in a dump, and a
string is copied, encoded and decoded by every backend at C speed, where a JSON list of
a thousand scattered runs costs a millisecond per write on the memory store.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

Runs = list[list[int]]


def _run_at(runs: Runs, offset: int) -> int:
    """Index of the last run starting at or before ``offset`` (-1 if none)."""
    return bisect.bisect_right(runs, offset, key=lambda run: run[0]) - 1


def contains(runs: Runs, offset: int) -> bool:
    at = _run_at(runs, offset)
    return at >= 0 and runs[at][1] >= offset


def add(runs: Runs, offset: int) -> bool:
    """Put ``offset`` in the set, merging runs; return False if it was there already."""
    at = _run_at(runs, offset)
    if at >= 0 and runs[at][1] >= offset:
        return False
    joins_left = at >= 0 and runs[at][1] == offset - 1
    joins_right = at + 1 < len(runs) and runs[at + 1][0] == offset + 1
    if joins_left and joins_right:
        runs[at][1] = runs[at + 1][1]
        del runs[at + 1]
    elif joins_left:
        runs[at][1] = offset
    elif joins_right:
        runs[at + 1][0] = offset
    else:
        runs.insert(at + 1, [offset, offset])
    return True


def remove(runs: Runs, offset: int) -> bool:
    """Take ``offset`` out of the set, splitting its run; return whether it was there."""
    at = _run_at(runs, offset)
    if at < 0 or runs[at][1] < offset:
        return False
    first, last = runs[at]
    if first == last:
        del runs[at]
    elif offset == first:
        runs[at][0] = offset + 1
    elif offset == last:
        runs[at][1] = offset - 1
    else:
        runs[at][1] = offset - 1
        runs.insert(at + 1, [offset + 1, last])
    return True


def first_free(runs: Runs, low: int, high: int) -> int | None:
    """The smallest offset of ``low..high`` not in the set, or None if all are."""
    at = _run_at(runs, low)
    candidate = runs[at][1] + 1 if at >= 0 and runs[at][1] >= low else low
    return candidate if candidate <= high else None


def next_free(runs: Runs, low: int, high: int, start: int) -> int | None:
    """The first free offset from ``start`` up to ``high``, else from ``low`` (wrapping)."""
    if low <= start <= high:
        found = first_free(runs, start, high)
        if found is not None:
            return found
        return first_free(runs, low, start - 1)
    return first_free(runs, low, high)


def size(runs: Runs) -> int:
    return sum(last - first + 1 for first, last in runs)


def offsets(runs: Runs) -> Iterator[int]:
    for first, last in runs:
        yield from range(first, last + 1)


def encode(runs: Runs) -> str:
    return ",".join([str(first) if first == last else f"{first}-{last}" for first, last in runs])


def decode(text: str) -> Runs:
    runs: Runs = []
    for part in text.split(",") if text else ():
        if "-" in part:
            first, last = part.split("-")
            runs.append([int(first), int(last)])
        else:
            single = int(part)
            runs.append([single, single])
    return runs


def from_offsets(values: list[int]) -> Runs:
    """Runs of a plain list of offsets (records written before runs existed)."""
    runs: Runs = []
    for value in sorted(set(values)):
        if runs and runs[-1][1] == value - 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs
