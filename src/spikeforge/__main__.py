"""``python -m spikeforge ...`` (and ``torchrun ... -m spikeforge ...``): the command line."""

import sys

from spikeforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
