"""python -m agent → the faultmail command line."""

from agent.cli import main

raise SystemExit(main())
