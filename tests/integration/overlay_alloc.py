"""A small driver script for the overlay tests: one host's pycnm process creating many
endpoints on an overlay as fast as it can, starting at an agreed moment so that several
hosts allocate at once. Prints the addresses it got, as JSON.

    python3 -m tests.integration.overlay_alloc --store URL --local-store URL --host-ns NS \
        --network NET --count 20 --start-at EPOCH_SECONDS
"""

from __future__ import annotations

import argparse
import json
import time

from cnm.controller import Controller


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--local-store", required=True)
    parser.add_argument("--host-ns", required=True)
    parser.add_argument("--network", required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    addresses = []
    with Controller(args.store, local_store=args.local_store,
                    host_ns=f"/run/netns/{args.host_ns}", reconcile=False) as ctl:
        net = ctl.network(args.network)
        delay = args.start_at - time.time()
        if 0 < delay < 30:
            time.sleep(delay)  # line up with the other hosts: not an assertion
        for _ in range(args.count):
            addresses.append(net.create_endpoint().record.address)
    print(json.dumps(addresses))


if __name__ == "__main__":
    main()
