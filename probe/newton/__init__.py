"""Damped Newton steps along the GGN eigenvectors: ``damping`` policies, ``newton`` steps
and the ``optim`` optimizer (paper §4.2)."""
