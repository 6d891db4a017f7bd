"""``dfine info``: what a checkpoint or exported model holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfine_cli.cli._common import handle_errors, print_json, print_table
from dfine_cli.cli.options import Json, Variant, Verbose


@handle_errors
def info(
    weights: Annotated[Path, typer.Argument(metavar="WEIGHTS", help="Checkpoint (any supported format, or a name from 'dfine weights list') or exported .onnx.")],
    variant: Variant = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Show what a checkpoint holds: size, variant, classes, input size, format."""
    from dfine_cli.describe import describe_weights

    record = describe_weights(weights, variant.value if variant else None)
    if json_out:
        print_json({"command": "info", **record})
    elif record.get("format") == "onnx":
        for kind in ("inputs", "outputs"):
            for v in record[kind]:
                typer.echo(f"{kind[:-1]}\t{v['name']}\t{v['dtype']}\t{v['shape']}")
        typer.echo(f"opset\t{record['opset']}")
    else:
        print_table("checkpoint", ["field", "value"],
                    [(k, v if not isinstance(v, list) or len(v) <= 8 else f"{v[:8]} ... ({len(v)})")
                     for k, v in record.items()])
