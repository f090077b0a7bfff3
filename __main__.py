"""``python -m lamina ...`` runs the command line (see ``lamina.cli``)."""

import sys

from lamina.cli import main

sys.exit(main())
