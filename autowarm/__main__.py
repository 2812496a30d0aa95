"""``python -m autowarm``: the same as the ``autowarm`` command."""

from autowarm.cli import main

raise SystemExit(main())
