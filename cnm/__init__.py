"""pycnm: Docker's Container Network Model in Python.

The core (this package) owns life cycles, IPAM, the store and sandboxes; drivers
(``drivers/``) own their data plane; every kernel call goes through ``cnm.osl``.
"""

__version__ = "0.1.0"
