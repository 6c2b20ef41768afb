"""The one exception type for bad input (files, keys, indices, params).

Stages raise ``InputError`` (or a subclass) with a message that names the
problem; the CLI prints it without a traceback and exits with status 2.
"""


class InputError(ValueError):
    """Input that cannot be used: the message names the file, key or index."""


class NonFiniteLossError(InputError):
    """The loss, gradient norm or updated state became NaN or inf; the message names the step
    and the batch's episodes."""
