"""Scale out on existing engines: Ray Data for embedding, Ray tasks for sweeps, Ray Tune for search, DDP for PEFT.

Every engine runs the same functions as the local path (no second store, runner or trainer); ``--engine local``
stays the default and needs none of this package's optional dependencies (``pip install 'retune[ray]'``).
"""
