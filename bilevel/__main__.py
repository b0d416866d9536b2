"""``python -m bilevel``: the ``bilevel`` command (:func:`bilevel.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
