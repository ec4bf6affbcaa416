"""``python -m metaprune``: the command line (what ``torchrun -m metaprune`` runs)."""

import sys

from .cli import main

sys.exit(main())
