"""Derivative rules (VJP and JVP) of every :mod:`bilevel.numpy` primitive.

The definitions modules (elementwise, shape, reductions, indexing, linalg, nn, creation)
define the primitives and import no rule; the modules of this package, imported last by
:mod:`bilevel.numpy`, register the rules with autograd's ``defvjp``/``defjvp``, as
``autograd.numpy`` does with its ``numpy_vjps``. Imports point one way: the rules import
the definitions, and nothing but the package imports the rules. The rules are written in
the same primitives, so derivatives of any order and forward-over-reverse work on every
backend.

Notation in the rules: ``g`` is the cotangent of the output, ``t`` the tangent of an
input, ``ans`` the primal output.
"""

from bilevel.numpy.rules import arrays, elementwise, normalization, products

__all__ = ["arrays", "elementwise", "normalization", "products"]
