"""``python -m ldeq COMMAND ...``: the same entry point as the ``ldeq`` console script."""
import sys

from ldeq.cli import main

if __name__ == "__main__":
    sys.exit(main())
