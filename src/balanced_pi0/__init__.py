"""balanced_pi0: padding-aware, group-balanced flow-matching training of pi0 on mobile manipulators."""

__version__ = "0.1.0"
