"""``python -m longlora.qa``: see ``longlora.qa.cli``."""

import sys

from longlora.qa.cli import main

if __name__ == "__main__":
    sys.exit(main())
