"""``python3 -m cnm.cli`` runs the pycnm command line."""

import gc
import sys

from cnm.cli import main

code = main()
gc.freeze()  # the exit skips a last full collection (bin/pycnm says why)
sys.exit(code)
