"""``python -m terravl`` runs the command line (as the ``terravl`` entry point does)."""

import sys

from terravl.cli.main import entry

sys.exit(entry())
