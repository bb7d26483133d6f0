"""`python -m dsco` (also what torchrun runs)."""
from .cli import main

raise SystemExit(main())
