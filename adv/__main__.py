"""``python -m adv evaluate ...``: the command line of :mod:`adv.cli` (also the ``ncvx-adv`` script)."""

import sys

from adv.cli import main

if __name__ == "__main__":
    sys.exit(main())
