"""`python -m orchestrator.cli`, as the tests and benchmarks run it."""

import sys

from orchestrator.cli import main

sys.exit(main())
