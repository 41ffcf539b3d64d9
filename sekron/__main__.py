"""``python -m sekron`` runs the ``sekron`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
