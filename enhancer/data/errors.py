"""The error of the data layer: bad input that the user can fix (the message names the file or value and how)."""


class DataError(ValueError):
    """A dataset, file list or loader setting cannot be used as given."""
