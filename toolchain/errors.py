"""User-facing errors. Library code raises `RoutevitError`; only the CLI (toolchain/cli) turns
it into one line on stderr and exit code 2, with no traceback."""


class RoutevitError(Exception):
    """A problem with the user's input. Message = what is wrong + what to do."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message
