"""The three problem families of Benchopt's ``benchmark_bilevel``, without downloads.

* :func:`quadratic`: simulated quadratics with controlled conditioning, exact optimum;
* :func:`regularization`: per-feature L2 regularisation of a logistic regression, on a
  generated classification set (scikit-learn's ``make_classification``);
* :func:`cleaning`: hyper data cleaning of scikit-learn's bundled digits with corrupted
  training labels (one weight per training sample).
"""

from .classification import cleaning, regularization
from .family import Family
from .quadratic import quadratic

__all__ = ["Family", "cleaning", "quadratic", "regularization"]
