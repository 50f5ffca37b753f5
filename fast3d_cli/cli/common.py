"""Options and helpers shared by the commands (kept import-light: no torch at import time)."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fast3d_cli.data.config import DataConfig, sample_data_dir

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        # "\\[" keeps rich from reading "[data]" as markup and dropping it
        help="Settings file with \\[data], \\[model] and \\[defaults.*] tables (default: ./fast3d.toml "
        "if present).",
    ),
]
DataRootOption = Annotated[
    Path | None, typer.Option("--data-root", help="Annotation folder (default: the embedded sample world).")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of the path.")
]
ModelOption = Annotated[
    Path | None, typer.Option("--model", help="fast3d model directory (default: sample model).")
]
CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", help="Official Chat-Scene .pth checkpoint.")
]
BaseLLMOption = Annotated[Path | None, typer.Option("--base-llm", help="Base LLM folder for --checkpoint.")]
TrustCheckpointOption = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Load a .pth/.pt checkpoint with full pickle (weights_only=False). RISK: unpickling runs any "
        "code the file holds; use only for checkpoints from a source you trust. Without it, checkpoints load "
        "with weights_only=True plus inert placeholders for pickled config objects, and a file that would "
        "call other code is refused.",
    ),
]
LoraAlphaOption = Annotated[
    float | None, typer.Option("--lora-alpha", help="LoRA alpha of --checkpoint (default: r).")
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
]


def data_config(config: Path | None, data_root: Path | None) -> DataConfig:
    if config is None and Path("fast3d.toml").is_file():
        config = Path("fast3d.toml")
    return DataConfig.from_toml(config, root=data_root)


def default_model_dir() -> Path:
    return sample_data_dir() / "model"


def model_source(
    model: Path | None,
    checkpoint: Path | None,
    base_llm: Path | None,
    lora_alpha: float | None,
    trust_checkpoint: bool = False,
):
    from fast3d_cli.models.loading import ModelSource

    return ModelSource(
        model_dir=model or (None if checkpoint else default_model_dir()),
        checkpoint=checkpoint,
        base_llm=base_llm,
        lora_alpha=lora_alpha,
        trust_checkpoint=trust_checkpoint,
    )


_invocation: list[str] | None = None  # set by ``fast3d_cli.cli.app.run`` when called with explicit arguments


def set_invocation(argv: list[str] | None) -> None:
    global _invocation
    _invocation = argv


def command_line() -> str:
    """The command being run, as recorded in store provenance."""
    return shlex.join(["fast3d", *(sys.argv[1:] if _invocation is None else _invocation)])


def emit(path: Path, payload: Any, as_json: bool) -> None:
    """stdout carries only the output path, or the JSON payload with --json (pipelines read it)."""
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(f"{path}\n")
    sys.stdout.flush()


def read_line_from_stdin(what: str) -> str:
    """The path or URL a previous pipeline stage printed (its first non-empty stdout line)."""
    from fast3d_cli.errors import UserError

    for line in sys.stdin:
        if line.strip():
            return line.strip()
    raise UserError(f"{what} -: no path on stdin (pipe the previous stage's output)")


def read_path_from_stdin(what: str) -> Path:
    return Path(read_line_from_stdin(what))


def path_or_stdin(path: Path, what: str) -> Path:
    """``path``, or the path read from stdin when it is "-" (pipelines: ``a | fast3d b -``)."""
    return read_path_from_stdin(what) if str(path) == "-" else path


def store_argument(value: str | Path, what: str):
    """A store given on the command line: a path or URL (``file://``, ``memory://``, ``s3://`` ...), or "-"
    for the one the previous pipeline stage printed. An unknown URL scheme or a missing fsspec backend is
    refused here, before anything loads."""
    from fast3d_cli.stores.location import StoreLocation

    text = read_line_from_stdin(what) if str(value) == "-" else str(value)
    return StoreLocation.parse(text)


def store_output(value: str | Path, option: str = "--output"):
    """An output store (path or URL), checked like :func:`check_output_location` when it is local; a URL
    store is listed once, so an unreachable bucket or missing credentials are reported before any work."""
    location = store_argument(value, option)
    if location.local is not None:
        check_output_location(location.local, option)
    else:
        location.exists()
        warn_if_in_memory(location, option)
    return location


def warn_if_in_memory(location: Any, option: str) -> None:
    """One stderr line for a ``memory://`` output: it lives in this process and is gone when it exits."""
    if str(location.url or "").lower().startswith("memory://"):
        print(
            f"fast3d: warning: {option} {location} is held in this process's memory and is gone when it "
            "exits; give a path or a persistent URL to keep it",
            file=sys.stderr,
        )


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: str) -> str:
    """Refuse a malformed --device before torch is imported (whether CUDA is there is checked later)."""
    from fast3d_cli.errors import UserError

    if not DEVICE_PATTERN.fullmatch(device):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    from fast3d_cli.errors import UserError

    if value not in choices:
        raise UserError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_output_location(path: Path, option: str = "--output") -> Path:
    """Refuse, before any work, an output that cannot be created: a missing path whose nearest existing
    parent is not a directory (``-o /dev/null/x``), or not writable (permissions, a read-only file system).
    An existing output is left to the stage (a rerun that finds everything done may write nothing)."""
    from fast3d_cli.errors import UserError

    path = Path(path)
    if path.exists():
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable"
        raise UserError(f"cannot create {option} {path}: {parent} {why}")
    probe_folder(parent, f"cannot create {option} {path}")
    return path


def probe_folder(parent: Path, refusal: str) -> None:
    """Create and remove a folder in ``parent``: permissions say yes on ``/proc`` and ``/sys``, and on
    some mounts, where creating anything fails; :class:`UserError` starting with ``refusal`` then."""
    import tempfile

    from fast3d_cli.errors import UserError

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fast3d-probe-", dir=parent))
    except OSError as err:
        raise UserError(f"{refusal}: nothing can be created in {parent} ({err.strerror or err})") from None
