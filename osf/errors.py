"""Errors OSF raises for bad input.

Each names the argument (or file), what was wrong and what is allowed, in one line. Both
classes are also ``ValueError`` s, so code that handles bad input by catching ``ValueError``
(the command line does) handles these too.
"""
from __future__ import annotations


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type (a float where a size must be an int, a string where
    tensors are expected, a supernet where a model is expected...)."""


class FolderNotEmptyError(FileExistsError, ValueError):
    """``save_subnet`` was pointed at a folder that already holds a model; pass
    ``overwrite=True`` to replace it."""


__all__ = ["InputTypeError", "FolderNotEmptyError"]
