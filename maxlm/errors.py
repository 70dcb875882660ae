"""The one exception type users see: a message naming the key, file or line at fault."""


class MaxlmError(Exception):
    """Bad input: config key, file, record, mesh or checkpoint; printed without a traceback."""
