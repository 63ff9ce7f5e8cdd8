"""The one exception a document stage raises: rendering, sources and steps share it without importing Dagster."""


class DocumentError(Exception):
    """A document-level failure with a reason a person understands; permanent unless `retryable`."""

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "invalid_input"):
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason
