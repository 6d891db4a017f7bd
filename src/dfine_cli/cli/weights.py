"""``dfine weights list|download|convert``: the official weights by name, and our format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.cli._common import handle_errors, img_size_option, print_json, print_table
from dfine_cli.cli.options import ImgSize, Json, Variant, Verbose

app = typer.Typer(no_args_is_help=True, help="Official weights by name; convert checkpoints between formats.")


@app.callback()
def group(verbose: Verbose = False) -> None:
    """-v/--verbose is accepted here too, between the group and its command."""


@app.command("list")
@handle_errors
def weights_list(json_out: Json = False, verbose: Verbose = False) -> None:
    """Show the official weights dfine knows by name, their official AP and cache state."""
    from dfine_cli.hub.listing import list_weights
    from dfine_cli.hub.registry import base_url, dfine_home

    rows = list_weights()
    if json_out:
        print_json({"command": "weights list", "base_url": base_url(), "cache": str(dfine_home()),
                    "weights": [r.to_dict() for r in rows]})
        return
    print_table(
        "official weights",
        ["name", "size", "backbone", "dataset", "AP", "AP on", "cached"],
        [(r.entry.name, r.entry.size or "-", f"HGNetv2-{r.entry.backbone}", r.entry.dataset,
          f"{r.entry.ap:.3f}" if r.entry.ap is not None else "-", r.entry.ap_on or "-",
          "yes" if r.cached else "no") for r in rows],
    )


@app.command("download")
@handle_errors
def weights_download(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Names from 'dfine weights list'.")],
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Download official weights into the cache ($DFINE_HOME, default ~/.cache/dfine)."""
    from dfine_cli.hub.listing import download_weights

    rows = download_weights(names)
    if json_out:
        print_json({"command": "weights download", "weights": [r.to_dict() for r in rows]})
        return
    for row in rows:
        typer.echo(f"{row.entry.name}\t{row.path}")


@app.command("convert")
@handle_errors
def weights_convert(
    weights: Annotated[Path, typer.Argument(metavar="WEIGHTS", help="Official D-FINE/DEIM .pth, transformers folder/.safetensors, or ours.")],
    dst: Annotated[Path, typer.Argument(metavar="DST", help="Output checkpoint (our format).")],
    variant: Variant = None,
    names: Annotated[str | None, typer.Option("--names", help="Class names to record: 'a,b,c', a text file (one per line), or a YAML/JSON list or map.", show_default="the source's")] = None,
    img_size: ImgSize = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Write our checkpoint format from any supported checkpoint."""
    from dfine_cli.checkpoints.convert import convert_checkpoint

    info = convert_checkpoint(weights, dst, variant=variant.value if variant else None,
                              names=names, img_size=img_size_option(img_size))
    if json_out:
        print_json({"command": "weights convert", "src": str(weights), "dst": str(dst),
                    "source_format": info.source_format, "size": info.config.name,
                    "variant": info.variant, "num_classes": info.num_classes})
    else:
        typer.echo(str(dst))
