"""`routevit setup-tflm`: put a TFLM tree (pinned commit + TFLM's pinned pieces) into the cache."""
import json
import logging

import click

from toolchain.tflm.pieces import PINNED_COMMIT


@click.command("setup-tflm")
@click.option("--from", "from_paths", multiple=True,
              type=click.Path(exists=True, file_okay=True, dir_okay=True),
              help="Local copy of TFLM or a piece (checkout, bare git dir, .tar.gz/.zip archive), or a "
                   "folder holding several (e.g. owner+name/repo subfolders). Repeatable.")
@click.option("--commit", default=PINNED_COMMIT, show_default=True,
              help="TFLM commit to set up (pieces follow TFLM's own pins at that commit).")
@click.option("--offline", is_flag=True, help="Never clone: use only the --from copies.")
@click.option("--git-url", default=None, metavar="TEMPLATE",
              help="Clone URL template with {owner} {name} (default https://github.com/{owner}/{name}.git; "
                   "env ROUTEVIT_TFLM_GIT_URL).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Cache root (default $ROUTEVIT_CACHE or ~/.cache/routevit).")
@click.option("--force", is_flag=True, help="Set the tree up again even if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the tree manifest as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Log every git call.")
def command(from_paths, commit, offline, git_url, cache, force, as_json, verbose):
    """Set up a TFLM tree from the network or from local copies (offline)."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    from toolchain.tflm.setup import setup_tree

    tree = setup_tree(from_paths, commit, offline=offline, git_url=git_url, cache=cache, force=force)
    if as_json:
        click.echo(json.dumps({"path": str(tree.root), **tree.manifest}, sort_keys=True))
    else:
        click.echo(str(tree.root))
