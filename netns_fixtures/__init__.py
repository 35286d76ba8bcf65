"""Throwaway network namespaces for tests and labs, and the pytest plugin that hands them
out (``netns_fixtures.plugin``, registered as a pytest11 entry point).

Who does what: ``netns`` makes and removes namespaces and wires them; ``leaks`` lists what
pycnm left in the kernel; ``plugin`` gives tests fixtures that always clean up and fails
the session on a leak; ``docker`` and ``etcd`` start real servers for a session.
"""
