"""``python -m bench.target``: the load test's echo/sink target, which now ships in the package
(``gconnect.loadtest.target``); kept for the studies that start it by this name."""

import sys

from gconnect.loadtest.target import main

if __name__ == "__main__":
    sys.exit(main())
