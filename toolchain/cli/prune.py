"""`routevit prune EXP --data D --out EXP2`: drop the experts one deployment site does not use."""
import json

import click

from toolchain.prune import DEFAULT_COUNT_IMAGES, DEFAULT_MIN_SHARE


@click.command("prune")
@click.argument("exp", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, metavar="D",
              help="The site's images: fashion-mnist, ssw60:PATH or folder:PATH (its train split is "
                   "counted, its test split gives the site's accuracy).")
@click.option("--classes", default=None, metavar="A,B,...",
              help="Only these classes of D (names or indices): the species the site sees.")
@click.option("--out", required=True, type=click.Path(file_okay=False, writable=True),
              help="Pruned export folder to write (an export like `routevit export` writes, plus prune.json).")
@click.option("--keep", type=click.IntRange(min=2), default=None, metavar="K",
              help="Keep the K most chosen experts of every routed layer.")
@click.option("--min-share", type=click.FloatRange(0.0, 1.0, max_open=True), default=DEFAULT_MIN_SHARE,
              show_default=True, help="Without --keep: keep the fewest experts that leave less than this "
              "share of each layer's patch choices to the dropped ones.")
@click.option("--count-images", type=click.IntRange(min=2), default=DEFAULT_COUNT_IMAGES, show_default=True,
              metavar="N", help="Count expert choices on the first N site images of the train split.")
@click.option("--eval-limit", type=click.IntRange(min=2), default=None, metavar="N",
              help="Site accuracy on the first N site images of the test split (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print prune.json as one JSON object.")
def command(exp, data, classes, out, keep, min_share, count_images, eval_limit, as_json):
    """Count how often the int8 model of EXP chooses each expert on a site's images, keep the
    experts the site needs (the router's remaining choices take the others' patches, capacity
    re-derived) and export the smaller model to OUT for generate/build like any export."""
    from toolchain.prune import prune_export

    names = [c for c in classes.split(",") if c.strip()] if classes else None
    report = prune_export(exp, data, out, classes=names, keep=keep, min_share=min_share,
                          count_images=count_images, eval_limit=eval_limit)
    for layer in report["layers"]:
        shares = " ".join(f"{s:.0%}" for s in layer["share"])
        click.echo(f"{layer['name']}: choices {shares} -> kept experts {layer['kept']} "
                   f"(capacity {layer['capacity_before']} -> {layer['capacity_after']})", err=True)
    top1 = report["site_top1"]
    click.echo(f"experts {report['experts_before']} -> {report['experts_after']} per routed layer; segments "
               f"{report['segment_bytes_before']:,} -> {report['segment_bytes_after']:,} B; site int8 top-1 "
               f"{top1['before']:.2%} -> {top1['after']:.2%} on {report['test_images']} test images", err=True)
    click.echo(f"-> {out}", err=True)
    if as_json:
        click.echo(json.dumps(report))
