"""Service discovery: the embedded DNS resolver at 127.0.0.11 of every pycnm sandbox.

Who does what:

- ``names``: the rules a DNS name from a user must follow (aliases) and the constants.
- ``registry``: the names, built from the store's records (this host's, and other hosts'
  on cluster-wide networks) into an immutable ``Snapshot``: per sandbox, the networks it
  sees and what each name there resolves to. Other features add names as ``NameEntry``
  values (a service's virtual IP, say) without touching the resolver.
- ``answer``: one query in, one reply out, from a sandbox's view (pure; no sockets).
- ``upstreams``: the host's DNS servers (resolv.conf, systemd-resolved's real file).
- ``server``: one event loop serving every sandbox's sockets, and the forwarding of
  names it does not know to upstream servers.
- ``service``: the long-running part (``pycnm agent``, ``pycnm plugin serve``): keeps the
  snapshot in line with the store, takes sandboxes over, publishes this host's names for
  the cluster, and gives sandboxes back their plain files when it stops.
- ``client``: what short-lived processes ask (is a resolver serving this host? has it
  seen my change yet?).

Why one process serves every sandbox, and the figures behind it: docs/dns.md.
"""
