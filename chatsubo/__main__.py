"""``python -m chatsubo``: the same as the ``chatsubo`` command."""

import sys

from .server.cli import main

sys.exit(main())
