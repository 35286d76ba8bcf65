"""Publishing joined endpoints to the cluster off the join's path.

A join used to wait for its etcd put (one round trip, 2 ms of a 15 ms attach). Docker's
overlay does not wait either: it gossips the new endpoint after the join returns. Here one
worker thread per driver does the puts in the order they were queued, so a join returns
as soon as its kernel work is done and the put goes out at once, beside the rest of the
attach (addresses, files, the resolver).

The consistency model (docs/overlay.md):

- The host's local store is the truth: the join records the endpoint as joined before it
  queues the put. etcd mirrors it a round trip later.
- Ordering: whatever withdraws an endpoint (leave, delete, the network's removal) first
  waits for every queued put to finish (``flush``), so a join followed at once by a
  detach never leaves a published entry behind, in this process or in the next one: a
  process also flushes when it closes, so a CLI that attached has published before it
  exits, and a detach by another process comes after.
- A put that fails (etcd unreachable, the lease lost and no other) is logged, not raised:
  the host's agent publishes every joined endpoint of the local store that etcd lacks
  when it (re)connects and at every resync (``OverlayDriver.republish``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_Write = tuple[str, Callable[[], None]]


class Publisher:
    """One worker thread running queued cluster writes in order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[_Write | None] = queue.Queue()  # None: stop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, what: str, write: Callable[[], None]) -> None:
        """Run ``write`` soon, after every write submitted before it; ``what`` names it in
        the log if it fails."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()
            self._queue.put((what, write))

    def flush(self) -> None:
        """Return once every write submitted so far has been done (or has failed)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Finish the queued writes and stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                what, write = item
                try:
                    write()
                except Exception as exc:  # noqa: BLE001 - the agent's republish repairs it
                    log.warning("%s not published yet (%s); the host's agent publishes it "
                                "when it next reaches the cluster", what, exc)
            finally:
                self._queue.task_done()
