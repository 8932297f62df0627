"""Exception types shared across the runtime.

Every user-facing failure (a bad checkpoint, a wrong input shape, a missing engine)
raises one of these with a message that names the file or input and what was expected.
"""


class VisaEdgeError(Exception):
    """Base class for errors that the CLI reports without a traceback."""


class CheckpointError(VisaEdgeError):
    """A checkpoint folder or file is missing, incomplete or does not match the model."""


class InputError(VisaEdgeError):
    """An input (frame, mask, query, path) does not have the expected form."""
