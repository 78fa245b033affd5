"""Errors that describe a user mistake (bad file, bad JSON, wrong shape ...).

The command-line front ends catch :class:`CaioInputError` and print its message as one
line, without a traceback. Library code raises it with a message that names the file
and the problem, e.g. ``"imagesVal/x.nii.gz: shape (10, 10, 10), expected (160, 224, 192)"``.
"""

from __future__ import annotations


class CaioInputError(ValueError):
    """Bad user input: the message is one line naming the file and the problem."""
