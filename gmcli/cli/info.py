"""``gmcli info``: what a checkpoint holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from gmcli.cli.common import console, handle_errors, print_json


@handle_errors
def info(
    path: Path | None = typer.Argument(None, help="Checkpoint or run directory (default: the latest run)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metadata as one JSON object."),
) -> None:
    """Show what a checkpoint holds: model, data, metrics, versions, fingerprint."""
    from gmcli.checkpoint import read_checkpoint
    from gmcli.runs import resolve_run

    _, ckpt = resolve_run(path)
    tensors, meta = read_checkpoint(ckpt)
    calib = sorted(k for k in tensors if k.startswith("calib."))
    n_params = sum(t.numel() for k, t in tensors.items() if not k.startswith("calib."))
    if json_out:
        out = {k: v for k, v in meta.items() if k != "recipe"}
        out.update(path=str(ckpt), parameters=n_params, calibration=calib)
        print_json(out)
        return
    table = Table(title=str(ckpt), show_header=False)
    shape = "x".join(str(v) for v in meta["input_shape"])
    head = meta["head"] + (f" ({meta['head_config'].get('covariance')})" if meta["head"] == "gm" else "")
    rows = [
        ("name", meta.get("name", "")),
        ("head", head),
        ("backbone", f"{meta['backbone']['name']}, D = {meta['feat_dim']}, {n_params:,} parameters and buffers"),
        ("data", f"{meta['dataset']['name']}, input {shape}, {meta['num_classes']} classes"),
        ("classes", ", ".join(meta.get("class_names", []))),
        ("normalisation", f"mean {meta['mean']}, std {meta['std']}"),
        ("epoch", str(meta.get("epoch"))),
        ("metrics", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in meta.get("metrics", {}).items())),
        ("calibration", ", ".join(calib) or "none"),
        ("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())),
        ("created", meta.get("created", "")),
        ("fingerprint", meta["fingerprint"]),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
