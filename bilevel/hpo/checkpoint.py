"""Atomic, exact checkpoints of an outer loop (kept name; the format is
:mod:`bilevel.outer.checkpoint`, shared by :func:`bilevel.hpo.minimize` and
:func:`bilevel.meta.train`)."""

from ..outer.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
