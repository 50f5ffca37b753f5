"""``fast3d eval`` and ``fast3d extract`` with ``--model-family llava`` (docs/llava.md).

The commands parse their options and hand them here (:data:`fast3d_cli.models.families.FAMILIES` names
these handlers). Every option is checked before torch is imported; the model loads last.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast3d_cli.errors import UserError


@dataclass(frozen=True)
class LlavaRun:
    """What both commands need: the checkpoint, the QA file and the device."""

    model: Path | None
    qa_file: Path | None
    limit: int | None
    device: str
    dtype: str


def refuse_options(given: dict[str, bool]) -> None:
    """One line for the first option given that the llava family does not read."""
    for option, is_given in given.items():
        if is_given:
            raise UserError(f"{option} does not apply to --model-family llava (see docs/llava.md)")


def _prepare(run: LlavaRun) -> tuple[Any, list[Any]]:
    """(checked source, questions): every file check that needs no model."""
    from fast3d_cli.cli.common import check_choice, check_device
    from fast3d_cli.data.image_qa import load_image_qa
    from fast3d_cli.errors import DataFileError
    from fast3d_cli.models.llava_loading import LlavaSource
    from fast3d_cli.models.loading import DTYPES

    check_device(run.device)
    check_choice("--dtype", run.dtype, DTYPES)
    if run.model is None:
        raise UserError("--model-family llava needs --model DIR (a Hugging Face LLaVA checkpoint folder)")
    if run.qa_file is None:
        raise UserError(
            "--model-family llava needs --qa-file FILE (image/video QA JSON Lines, docs/llava.md)"
        )
    source = LlavaSource(run.model)
    samples = load_image_qa(run.qa_file, run.limit)
    for sample in samples:
        for frame in sample.frames:
            if not frame.is_file():
                raise DataFileError(f"image of question {sample.id!r} not found: {frame}")
        if sample.is_video != source.is_video:
            wanted, given = ("videos", "an image") if source.is_video else ("images", "a video")
            raise UserError(
                f"question {sample.id!r} gives {given}; this {source.architecture} reads {wanted}"
            )
    return source, samples


def resolve_budget(
    method: str,
    keep: int | None,
    ratio: float | None,
    alpha: str | None,
    layer: int,
    n_layers: int | None,
    shape: tuple[int, int] | None,
) -> tuple[int | None, float | None]:
    """(visual tokens kept per sample, SAP alpha), both None for ``none``, checked against the model's depth
    and the visual input ``shape`` (frames, tokens per frame; None where unknown). ``--ratio`` keeps the same
    share of every frame; FasterVLM on videos needs a --keep that splits evenly over the frames."""
    from fast3d_cli.models.families import check_method, get_family
    from fast3d_cli.pruning.budgets import check_alpha, check_layer

    spec = check_method(get_family("llava"), method)
    check_layer(layer, n_layers)
    if layer < spec.min_layer:
        raise UserError(f"{method} scores tokens with layer K-1 attention: use --layer >= {spec.min_layer}")
    if spec.budget != "fixed" and (keep is not None or ratio is not None):
        raise UserError(f"--keep/--ratio do not apply to --method {method}")
    if spec.budget != "sap" and alpha is not None:
        raise UserError(f"--alpha applies to the +sap methods, not {method}")
    if spec.budget == "sap":
        if alpha is None or alpha == "auto":
            raise UserError(f"--method {method} needs --alpha, a number in (0, 1] (no 'auto' for llava)")
        try:
            return None, check_alpha(float(alpha))
        except ValueError:
            raise UserError(f"--alpha must be a number in (0, 1], got {alpha!r}") from None
    if spec.budget == "none":
        return None, None
    return _fixed_keep(method, keep, ratio, layer, n_layers, shape), None


def _fixed_keep(
    method: str,
    keep: int | None,
    ratio: float | None,
    layer: int,
    n_layers: int | None,
    shape: tuple[int, int] | None,
) -> int:
    from fast3d_cli.pruning.budgets import check_ratio, keep_for_ratio

    if (keep is None) == (ratio is None):
        raise UserError(f"--method {method} needs exactly one of --keep or --ratio")
    if keep is not None and keep < 0:
        raise UserError(f"--keep must be >= 0, got {keep}")
    if ratio is not None:
        check_ratio(ratio)
        if n_layers is None or shape is None:
            raise UserError("--ratio needs the model's depth and image size in config.json; give --keep")
        keep = shape[0] * keep_for_ratio(ratio, layer, n_layers, shape[1])
    if shape is not None and keep > shape[0] * shape[1]:
        raise UserError(f"--keep {keep} exceeds the {shape[0] * shape[1]} visual tokens per sample")
    if method == "fastervlm" and shape is not None and keep % shape[0]:
        raise UserError(
            f"--keep must be a multiple of the {shape[0]} frames: FasterVLM keeps as many per frame"
        )
    return keep


def _question_maps(
    options: dict[str, Any], source: Any, samples: list[Any], shape: tuple[int, int] | None
) -> Any:
    """The --maps rows of the questions (oracle methods), checked before the model loads; else None."""
    from fast3d_cli.cli.common import store_argument
    from fast3d_cli.models.families import check_method, get_family

    spec = check_method(get_family("llava"), options["method"])
    if spec.scorer != "maps":
        if options["maps"] is not None:
            raise UserError(f"--maps does not apply to --method {spec.name}")
        return None
    if options["maps"] is None:
        raise UserError(f"--method {spec.name} needs --maps (an attention store from fast3d extract)")
    from fast3d_cli.pruning.image_qa_maps import load_question_maps

    location = store_argument(options["maps"], "--maps")
    n_visual = None if shape is None else shape[0] * shape[1]
    fingerprint = source.fingerprint()
    return load_question_maps(
        location, fingerprint, Path(options["qa_file"]), samples, n_visual, options["force"]
    )


def _visual_shape(source: Any, samples: list[Any]) -> tuple[int, int] | None:
    """(frames, tokens per frame) shared by every sample, None where unknown or mixed."""
    per_frame = source.patches_per_frame()
    frames = {len(s.frames) for s in samples}
    return None if per_frame is None or len(frames) != 1 else (frames.pop(), per_frame)


def _load(source: Any, run: LlavaRun, progress: Any, method: str) -> tuple[Any, Any]:
    from fast3d_cli.models.llava_inputs import make_adapter, qa_batch

    progress.phase(f"loading the target model ({source.describe()})")
    target = source.load(device=run.device, dtype=run.dtype)
    adapter = make_adapter(target)
    if method == "fastervlm":
        try:
            adapter.cls_attention_layer()
        except ValueError as err:
            raise UserError(f"--method fastervlm: {err}") from None
    return adapter, lambda rows: qa_batch(target, rows)


def _run(options: dict[str, Any]) -> LlavaRun:
    return LlavaRun(
        options["model"], options["qa_file"], options["limit"], options["device"], options["dtype"]
    )


CHATSCENE_ONLY = {  # option -> whether a command's parsed value means the user gave it
    "--checkpoint": lambda o: o.get("checkpoint") is not None,
    "--base-llm": lambda o: o.get("base_llm") is not None,
    "--lora-alpha": lambda o: o.get("lora_alpha") is not None,
    "--config": lambda o: o.get("config") is not None,
    "--data-root": lambda o: o.get("data_root") is not None,
    "--tasks": lambda o: o.get("tasks", "all") != "all",
    "--gap": lambda o: o.get("gap") is not None,
    "--granularity": lambda o: o.get("granularity", "object") != "object",
    "--fixed-count": lambda o: bool(o.get("fixed_count")),
    "--skip-padding": lambda o: bool(o.get("skip_padding")),
    "--baseline": lambda o: o.get("baseline") is not None,
    "--keep-layers": lambda o: bool(o.get("keep_layers")),
    "--scanqa-clean-refs": lambda o: bool(o.get("scanqa_clean_refs")),
    "--scan2cap-sos-eos": lambda o: o.get("scan2cap_sos_eos", "official") != "official",
}


def llava_eval(options: dict[str, Any]) -> None:
    """``fast3d eval --model-family llava``: ``options`` are the command's parsed options."""
    from fast3d_cli.cli.common import check_output_location, emit
    from fast3d_cli.cli.progress import ProgressReporter
    from fast3d_cli.evaluation.fingerprint import files_fingerprint
    from fast3d_cli.evaluation.image_qa import ImageQAEvalSettings
    from fast3d_cli.generation.config import GenerationConfig

    refuse_options({name: given(options) for name, given in CHATSCENE_ONLY.items()})
    run, method, layer = _run(options), options["method"], options["layer"]
    source, samples = _prepare(run)
    shape = _visual_shape(source, samples)
    keep, alpha = resolve_budget(
        method, options["keep"], options["ratio"], options["alpha"], layer, source.n_layers(), shape
    )
    maps = _question_maps(options, source, samples, shape)
    if options["renumber_positions"] and (method != "fastervlm" or layer != 0):
        raise UserError(
            "--renumber-positions applies to --method fastervlm at --layer 0 (the official setting)"
        )
    settings = ImageQAEvalSettings(
        method=method,
        keep=keep,
        alpha=alpha,
        maps=None if options["maps"] is None else str(options["maps"]),
        renumber_positions=options["renumber_positions"],
        layer=layer,
        seed=options["seed"],
        batch_size=options["batch_size"],
        generation=GenerationConfig(
            num_beams=options["num_beams"],
            max_new_tokens=options["max_new_tokens"],
            repetition_penalty=options["repetition_penalty"],
        ),
    )
    output = check_output_location(options["output"] or Path(f"runs/eval-llava-{method}"))
    identity = {
        "family": "llava",
        "model": source.fingerprint(),
        "qa_file": files_fingerprint([Path(run.qa_file)]),  # the questions (the images are not hashed)
        "limit": run.limit,
    }

    from fast3d_cli.evaluation.image_qa import run_image_qa_eval

    with ProgressReporter("eval") as progress:
        adapter, batcher = _load(source, run, progress, method)
        result = run_image_qa_eval(
            adapter, batcher, samples, settings, identity, output,
            maps=maps, overwrite=options["overwrite"], progress=progress.update,
        )  # fmt: skip
    for name, value in result["metrics"].items():
        print(f"{name:>24}  {value:.4f}", file=sys.stderr)
    emit(output / "metrics.json", result, options["as_json"])


def llava_extract(options: dict[str, Any]) -> None:
    """``fast3d extract --model-family llava``: ``options`` are the command's parsed options."""
    from fast3d_cli.attention.image_qa_extract import ImageQAExtractSettings
    from fast3d_cli.cli.common import command_line, emit, store_output
    from fast3d_cli.cli.progress import ProgressReporter

    refuse_options({name: given(options) for name, given in CHATSCENE_ONLY.items()})
    if options.get("split", "train,val") != "train,val":
        raise UserError("--split does not apply to --model-family llava (see docs/llava.md)")
    run = _run(options)
    source, samples = _prepare(run)
    if len({len(s.frames) for s in samples}) != 1:
        raise UserError("every video of one store needs the same frame count (the maps have one width)")
    location = store_output(options["output"])
    fingerprint = source.fingerprint()
    settings = ImageQAExtractSettings(batch_size=options["batch_size"], chunk_size=options["chunk_size"])

    from fast3d_cli.attention.image_qa_extract import extract_image_qa

    with ProgressReporter("extract") as progress:
        adapter, batcher = _load(source, run, progress, "none")
        result = extract_image_qa(
            adapter, batcher, samples, fingerprint, Path(run.qa_file), settings, location,
            command=command_line(), overwrite=options["overwrite"], progress=progress.update,
        )  # fmt: skip
    emit(location, result, options["as_json"])
