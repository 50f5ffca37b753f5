"""``fast3d info STORE``: what a store holds, how complete it is, and where it came from."""

from __future__ import annotations

from typing import Annotated

import typer

from fast3d_cli.cli.common import JsonOption, emit, store_argument


def info_command(
    store: Annotated[
        str, typer.Argument(help="A fast3d store (a path or URL), or '-' to read it from stdin.")
    ],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Decode every written chunk file and check its checksum (default); --no-verify only reads "
            "the commit markers, which is fast but does not find damaged score chunks.",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Show the tasks, sample counts, completeness and provenance of a store.

    Example: [bold]fast3d info maps.zarr --json[/bold]
    """
    from rich.console import Console
    from rich.table import Table

    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.stores import open_store

    store = store_argument(store, "STORE")
    opened = open_store(store)
    with ProgressReporter("info") as progress:
        if verify:
            progress.phase(f"verifying the checksums of every written chunk file of {store}")
        summary = opened.summary(verify=verify)
    if as_json:
        emit(store, summary, as_json=True)
        return
    console = Console(stderr=True)
    console.print(f"[bold]{store}[/bold]  kind={summary['kind']}  schema={summary['schema_version']}")
    for key in ("model", "data", "version", "command"):
        console.print(f"  {key}: {summary.get(key)}")
    table = Table()
    for column in ("task/split", "samples", "written", "chunks", "complete", "NaN/inf"):
        table.add_column(column)
    for group in summary["groups"]:
        bad = group["nonfinite_samples"]
        table.add_row(
            f"{group['task']}/{group['split']}",
            str(group["n_samples"]),
            str(group["written_samples"]),
            group["chunks"],
            "yes" if group["complete"] else "no",
            "?" if bad is None else (f"[bold red]{bad}[/bold red]" if bad else "0"),
        )
    console.print(table)
    if verify:
        files = sum(group.get("verified_files", 0) for group in summary["groups"])
        console.print(f"checksums: all {files} written chunk files verified")
        print_nonfinite_warning(summary["groups"])
    else:
        unread = "a damaged chunk file, or NaN/inf maps, are found when read"
        console.print(f"checksums: not verified (--no-verify): {unread}")
    emit(store, None, as_json=False)


def print_nonfinite_warning(groups: list[dict]) -> None:
    """One stderr line when samples have NaN/inf maps: complete is not usable (the stages refuse them)."""
    import sys

    bad = {f"{g['task']}/{g['split']}": g["nonfinite_samples"] for g in groups if g["nonfinite_samples"]}
    if bad:
        where = ", ".join(f"{name} {count}" for name, count in bad.items())
        total = sum(bad.values())
        print(
            f"fast3d: warning: {total} samples have NaN or infinite maps ({where}); search-alpha, train-gap "
            "and eval refuse them: extract or predict them again into a new store",
            file=sys.stderr,
        )
