"""digitlab: a reproducible DVC + MLflow pipeline for MNIST classifiers and GANs."""

__version__ = "0.1.0"
