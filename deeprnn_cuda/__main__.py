"""``python -m deeprnn_cuda`` runs the ``deeprnn`` command line."""
from .cli import main

raise SystemExit(main())
