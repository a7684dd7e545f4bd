"""`python -m katalon_license`, the same as the katalon-license command."""

from .cli import main

raise SystemExit(main())
