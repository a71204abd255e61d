"""The `routevit` command line: one subcommand per module in this package.

Each module `toolchain/cli/<name>.py` defines a click command object named `command`;
it is registered here lazily so `routevit --help` does not import TensorFlow.
"""
import importlib

import click

import toolchain  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TF import)

# command name -> module under toolchain.cli
COMMANDS = {
    "summarize": "summarize",
    "train": "train",
    "quantize": "quantize",
    "export": "export",
    "prune": "prune",
    "evaluate": "evaluate",
    "generate": "generate",
    "fit": "fit",
    "setup-tflm": "setup_tflm",
    "build": "build",
    "emulate": "emulate",
    "boards": "boards",
    "demo": "demo",
}


# Commands that never touch TensorFlow (no reason to pay its import time).
TENSORFLOW_FREE = {"boards", "setup-tflm", "build"}


class CliError(click.ClickException):
    """A RoutevitError as click shows it: `Error: <one line>` on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class LazyGroup(click.Group):
    def invoke(self, ctx):
        from toolchain.errors import RoutevitError

        try:
            return super().invoke(ctx)
        except RoutevitError as exc:
            raise CliError(exc.format_message()) from None

    def list_commands(self, ctx):
        return sorted(name for name, mod in COMMANDS.items() if _module_exists(mod))

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or not _module_exists(mod):
            return None
        if name not in TENSORFLOW_FREE:
            from toolchain.tfquiet import import_tensorflow_quietly

            import_tensorflow_quietly()
        return importlib.import_module(f"toolchain.cli.{mod}").command


def _module_exists(mod: str) -> bool:
    return importlib.util.find_spec(f"toolchain.cli.{mod}") is not None


@click.group(cls=LazyGroup)
@click.version_option(toolchain.__version__, prog_name="routevit")
def main():
    """routevit: routed MobileViTV2 -> int8 -> TFLite Micro firmware -> QEMU/Renode/board."""
