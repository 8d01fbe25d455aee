"""`python -m swarmcli`: what `scripts/swarm` runs."""

import sys

from swarmcli.main import main

sys.exit(main())
