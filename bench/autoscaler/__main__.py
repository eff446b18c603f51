"""``python -m bench.autoscaler``: see run.py."""

from .run import main

main()
