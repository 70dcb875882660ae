"""The one exception type users see: a message naming the key, file or line at fault."""


class MaxlmError(Exception):
    """Bad input: config key, file, record, mesh or checkpoint; printed without a traceback."""


class BadRecordError(MaxlmError):
    """A malformed record under on_bad_record=error; the message ends with how to skip such records."""

    def __init__(self, where: str, skip_hint: str = "set data.on_bad_record=skip"):
        self.where = where  # "file:line: what is wrong"
        super().__init__(f"{where}  ({skip_hint} to drop such records)")

    def hinting(self, skip_hint: str) -> "BadRecordError":
        """Returns this error with the way to skip named as the caller sets it (a flag rather than the config key)."""
        return BadRecordError(self.where, skip_hint)
