"""``python -m chatsubo.client``: run headless bots (see :mod:`chatsubo.peer.bot`)."""

import sys

from .peer.bot import main

if __name__ == "__main__":
    sys.exit(main())
