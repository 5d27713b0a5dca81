"""`python -m app`: the same as `sdglass app` (see app.launcher.launch)."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
