"""pycnm as a Docker network and IPAM plugin (libnetwork's remote driver protocol).

Who does what:

- ``protocol``: reading Docker's JSON at the boundary: one clear sentence per bad field.
- ``handlers``: one function per call, each a thin translation onto the cnm Controller.
- ``docker_ipam``: what Docker's IPAM protocol adds to pycnm's IPAM (pool ids and their
  reference counts), kept in the store.
- ``app``: the Flask application: the table of paths, one decode/call/encode path, one
  error path, per-call logs with durations.
- ``server``: waitress on a Unix socket (mode 0660 from birth), signals, shutdown.
- ``cli``: ``pycnm plugin serve``.
"""
