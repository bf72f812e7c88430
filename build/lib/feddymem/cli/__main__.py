"""`python -m feddymem.cli`."""

from feddymem.cli import main

raise SystemExit(main())
