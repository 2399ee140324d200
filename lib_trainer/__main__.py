"""`python -m lib_trainer ...`: see lib_trainer/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
