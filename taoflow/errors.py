"""User-facing errors.

Every error a user can cause with bad input is a TaoflowError. The CLI prints its message on one line and exits
non-zero without a traceback, so the message must say *where* (file and line when there is one) and *what to do*.
"""


class TaoflowError(Exception):
    """An error caused by user input or environment, reported without a traceback."""

    exit_code = 2

    def __init__(self, message, path=None, line=None, column=None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        super().__init__(self.__str__())

    def location(self):
        if self.path is None:
            return ""
        loc = self.path
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self):
        loc = self.location()
        return f"{loc}: {self.message}" if loc else self.message


class SpecError(TaoflowError):
    """A TAO spec file that does not parse or does not validate."""


class DataError(TaoflowError):
    """A dataset file (label, image, layout) that cannot be used."""


class OutputExistsError(TaoflowError):
    """An output that already exists and would be overwritten without --replace."""
