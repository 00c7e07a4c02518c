"""The report's input errors: the message names the bad file or value and the fix (the CLI exits with code 2)."""


class ReportError(Exception):
    """A report cannot be written from these inputs (a missing summary, an unreadable audit, a foreign --out)."""
