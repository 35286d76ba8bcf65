"""``python3 -m cnm.cli`` runs the pycnm command line."""

import sys

from cnm.cli import main

sys.exit(main())
