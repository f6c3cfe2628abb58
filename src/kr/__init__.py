"""Knowledge Recycling: classifiers trained only on regenerated synthetic data."""

__version__ = "0.1.0"
