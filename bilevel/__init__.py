"""bilevel: hypergradients for bilevel optimization on NumPy and CuPy."""

__version__ = "0.1.0"
