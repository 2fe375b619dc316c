"""``python -m rooftrace`` runs the command line."""

from rooftrace.cli import main

raise SystemExit(main())
