"""`dfine weights list` and `dfine weights download`: the official weights by name."""

from __future__ import annotations

import typer

from dfine_cli.cli._common import handle_errors, print_json, print_table


def weights_list(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show the official weights dfine knows by name, their official AP and cache state."""
    handle_errors(_list)(json_out)


def _list(json_out: bool) -> None:
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


def weights_download(
    names: list[str] = typer.Argument(..., help="Names from 'dfine weights list'."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Download official weights into the cache ($DFINE_HOME, default ~/.cache/dfine)."""
    handle_errors(_download)(names, json_out)


def _download(names: list[str], json_out: bool) -> None:
    from dfine_cli.hub.listing import download_weights

    rows = download_weights(names)
    if json_out:
        print_json({"command": "weights download", "weights": [r.to_dict() for r in rows]})
        return
    for row in rows:
        typer.echo(f"{row.entry.name}\t{row.path}")


def register(app: typer.Typer) -> None:
    """Add ``list`` and ``download`` to the ``weights`` group."""
    app.command("list")(weights_list)
    app.command("download")(weights_download)
