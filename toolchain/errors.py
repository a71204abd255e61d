"""User-facing errors: one line, exit code 2, no traceback."""
import click


class RoutevitError(click.ClickException):
    """A problem with the user's input. Message = what is wrong + what to do; exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True, file=file)
