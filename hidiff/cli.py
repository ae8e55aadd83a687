"""The ``hidiff`` command: train, evaluate, select, diagnose, segment and demo.

Examples::

    hidiff train --config configs/kvasir.yaml --set train.pretrain_iterations=2000
    torchrun --nproc_per_node 2 -m hidiff.cli train --config configs/kvasir.yaml
    hidiff evaluate --checkpoint runs/kvasir/best.pt --split test --output runs/kvasir/test.json
    hidiff evaluate --checkpoint runs/kvasir/best.pt --dataset cvc --data-root CVC-ClinicDB --split test
    hidiff select --checkpoint runs/kvasir/best.pt --split val
    hidiff diagnose --checkpoint runs/kvasir/best.pt --split val
    hidiff segment polyp.jpg --checkpoint runs/kvasir/best.pt --output-dir masks/
    hidiff demo
    hidiff flops --markdown table_xi.md --csv table_xi.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from .diffusion.modes import Sampler

logger = logging.getLogger("hidiff")


def _parse_override(text: str) -> tuple[list[str], object]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE with a dotted key, e.g. optim.lr=3e-4; got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(config: dict, overrides: Sequence[tuple[list[str], object]]) -> dict:
    """Sets dotted keys in a nested config dict (unknown keys are rejected later by the config class)."""
    for keys, value in overrides:
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {'.'.join(keys)}: {key!r} is not a section")
        node[keys[-1]] = value
    return config


def _load_config(path: str | None, overrides: Sequence[tuple[list[str], object]]):
    from .config import TrainingConfig

    data: dict = {}
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise FileNotFoundError(f"config file not found: {config_path}")
        data = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{config_path} must hold a mapping of config sections, got {type(data).__name__}")
    return TrainingConfig.from_dict(apply_overrides(data, overrides))


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (sizes, counts, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _size(text: str) -> int:
    """argparse type: an image or window side, a positive multiple of 32 (the models' coarsest feature stride)."""
    from .config import SIZE_MULTIPLE

    value = _positive_int(text)
    if value % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of {SIZE_MULTIPLE}, got {value}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed in [0, 2^63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2^63), got {value}")
    return value


def _existing_file(path: str | None, what: str) -> None:
    """Raises FileNotFoundError / IsADirectoryError naming `what` unless `path` is None or a file."""
    if path is None:
        return
    if Path(path).is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, expected a file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


def _existing_dir(path: str | None, what: str) -> None:
    """Raises NotADirectoryError naming `what` unless `path` is None or a directory."""
    if path is not None and not Path(path).is_dir():
        raise NotADirectoryError(f"{what} {path} is not a directory")


def _writable_file(path: str | None, what: str) -> None:
    """Raises IsADirectoryError / NotADirectoryError naming `what` when `path` cannot be written as a file."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, expected a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{what} {path}: {parent} is a file, not a directory")
            break


def _writable_dir(path: str, what: str) -> None:
    """Raises NotADirectoryError naming `what` when `path`, or a folder above it, is an existing file."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"{what} {path}: {folder} is a file, not a directory")
            break


def _add_checkpoint_and_data_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    """--checkpoint, --split (default val), --data-root and --batch-size of the commands that read a split."""
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (best.pt or latest.pt)")
    parser.add_argument("--split", default="val", help=split_help)
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the one in the checkpoint)")
    parser.add_argument("--batch-size", type=_positive_int, default=8)


def _add_sampling_arguments(parser: argparse.ArgumentParser, ensemble: bool = True) -> None:
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="reverse diffusion steps (default: the model's stored setting, chosen on validation)",
    )
    if ensemble:
        parser.add_argument(
            "--samples",
            type=_positive_int,
            default=None,
            help="ensemble size: samples averaged per image (default: the model's stored setting)",
        )
        parser.add_argument(
            "--refine",
            action="store_true",
            help="run the refiner even where the model's stored settings turn refinement off (because no setting "
            "beat the segmentor on validation); --steps, --samples and --sampler imply it",
        )
        parser.add_argument(
            "--layer-by-layer",
            action="store_true",
            help="run the refiner layer by layer instead of its frozen form (packed weights, per-step tables, "
            "fused kernels; the default, several times faster, same results up to float rounding)",
        )
    parser.add_argument(
        "--sampler", choices=Sampler.choices(), default=None, help="default: the model's stored setting"
    )
    parser.add_argument(
        "--seed", type=_seed, default=None, help="sampling seed (same seed, same masks; default: the stored one)"
    )
    parser.add_argument("--no-ema", action="store_true", help="use the raw refiner weights instead of the EMA")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's choice)")


def _settings(args: argparse.Namespace, model):
    """The model's stored refinement settings with the command line's sampling arguments where given."""
    given: dict = {}
    for name in ("steps", "samples", "sampler", "seed"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    if getattr(args, "layer_by_layer", False):
        given["frozen"] = False
    if getattr(args, "refine", False) or given.keys() & {"steps", "samples", "sampler"}:
        given["refine"] = True
    settings = model.settings.override(**given)
    logger.info("refinement: %s", settings.describe(model.diffusion.num_steps))
    return settings


def _evaluation_dataset(args: argparse.Namespace, model, config):
    """The dataset that ``evaluate``/``select`` read: the checkpoint's own, or ``--dataset`` (cross-dataset
    evaluation) at the checkpoint's training resolution.

    Raises:
        ValueError: the other dataset's image channels or class count differ from the model's.
    """
    from .data import build_dataset

    name = getattr(args, "dataset", None) or config.data.name
    if name == config.data.name:
        root = args.data_root if args.data_root is not None else config.data.root
        return build_dataset(name, root, args.split, **config.data.dataset_kwargs())
    # Another reader: only the training resolution carries over (the other keyword arguments are the training
    # reader's own).
    size = {} if config.data.image_size is None else {"image_size": config.data.image_size}
    dataset = build_dataset(name, args.data_root, args.split, **size)
    expected = {"in_channels": model.segmentor.in_channels, "num_classes": model.num_classes}
    for attribute, value in expected.items():
        found = getattr(dataset, attribute, None)
        if found is not None and found != value:
            raise ValueError(
                f"--dataset {name} has {attribute} = {found}, but the checkpoint's model (trained on "
                f"{config.data.name}) expects {value}: a model can be evaluated only on data with its image channels "
                "and classes"
            )
    return dataset


def _command_train(args: argparse.Namespace) -> int:
    from .training import run_training

    _existing_file(args.resume, "--resume checkpoint")
    config = _load_config(args.config, args.overrides)
    output_dir = run_training(config, resume=args.resume, device=args.device, overwrite=args.overwrite)
    logger.info("outputs in %s", output_dir)
    return 0


def _command_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .factory import load_model
    from .metrics import format_report

    _existing_file(args.checkpoint, "--checkpoint")
    _writable_file(args.output, "--output")
    _existing_dir(args.data_root, "--data-root")
    model, config = load_model(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    dataset = _evaluation_dataset(args, model, config)
    name = args.dataset or config.data.name
    settings = _settings(args, model)
    # Readers that train on crops of larger images (DRIVE, CHASE_DB1) are evaluated by a sliding window.
    window = args.window or getattr(dataset, "crop_size", None)
    trained_on = f" (trained on {config.data.name})" if name != config.data.name else ""
    if args.seeds:
        from .comparison import compare, format_comparison

        if args.no_refine:
            raise ValueError("--seeds compares the refined masks with the segmentor's: drop --no-refine")
        comparison = compare(
            model, dataset, settings, args.seeds, batch_size=args.batch_size, window=window, device=args.device
        )
        print(f"## {name} / {args.split}{trained_on}: segmentor vs HiDiff, paired per image\n")
        print(f"HiDiff: {settings.describe(model.diffusion.num_steps)}\n")
        print(format_comparison(comparison))
        report = vars(comparison)
    else:
        result = evaluate(
            model,
            dataset,
            settings=settings,
            refine=not args.no_refine,
            batch_size=args.batch_size,
            window=window,
            device=args.device,
        )
        print(f"## {name} / {args.split}{trained_on}: {result.num_images} images\n")
        print("### Segmentor alone\n\n" + format_report(result.segmentor))
        if result.refined is not None:
            print(f"\n### HiDiff: {settings.describe(model.diffusion.num_steps)}\n\n" + format_report(result.refined))
        report = vars(result)
    report = {"dataset": name, "trained_on": config.data.name, "split": args.split, **report}
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=_json_value))
        logger.info("wrote %s", output)
    return 0


def _command_select(args: argparse.Namespace) -> int:
    from .factory import load_model
    from .selection import format_selection, select_settings, store_settings

    _existing_file(args.checkpoint, "--checkpoint")
    _existing_dir(args.data_root, "--data-root")
    model, config = load_model(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    dataset = _evaluation_dataset(args, model, config)
    chosen = select_settings(
        model,
        dataset,
        steps=[None if s == 0 else s for s in args.grid_steps],
        ensembles=args.grid_samples,
        sampler=args.sampler,
        seed=args.seed if args.seed is not None else model.settings.seed,
        split=args.split,
        batch_size=args.batch_size,
        window=getattr(dataset, "crop_size", None),
        device=args.device,
    )
    print(format_selection(chosen, model.diffusion.num_steps))
    if args.dry_run:
        logger.info("--dry-run: %s left unchanged", args.checkpoint)
    else:
        store_settings(args.checkpoint, chosen)
        logger.info("stored in %s", args.checkpoint)
    return 0


def _json_value(value: object) -> object:
    """JSON form of the numpy values in results: arrays as nested lists, scalars as floats."""
    return value.tolist() if hasattr(value, "tolist") else float(value)


def _command_diagnose(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .diagnostics import diagnose, format_diagnostics, write_diagnostics
    from .factory import load_model

    _existing_file(args.checkpoint, "--checkpoint")
    output_dir = (
        Path(args.output_dir) if args.output_dir else Path(args.checkpoint).parent / f"diagnostics_{args.split}"
    )
    _writable_dir(str(output_dir), "--output-dir")
    model, config = load_model(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    root = args.data_root if args.data_root is not None else config.data.root
    dataset = build_dataset(config.data.name, root, args.split, **config.data.dataset_kwargs())
    settings = _settings(args, model)
    result = diagnose(
        model,
        dataset,
        steps=settings.steps,
        sampler=settings.sampler,
        max_images=args.max_images,
        batch_size=args.batch_size,
        seed=settings.seed,
        device=args.device,
    )
    print(f"## Refiner diagnostics: {config.data.name} / {args.split}\n")
    print(format_diagnostics(result))
    if not args.no_prior_errors:
        from .prior_errors import compare_splits, format_prior_errors

        # The priors the refiner learned from (training images, augmented as in training) against these.
        train_set = build_dataset(config.data.name, root, config.data.train_split, **config.data.dataset_kwargs())
        splits = {f"{config.data.train_split} (as trained)": train_set, args.split: dataset}
        limits = {"max_images": args.max_images, "batch_size": args.batch_size}
        errors = compare_splits(model, splits, device=args.device, **limits)
        print("### The segmentor's prior: training images vs these\n")
        print(format_prior_errors(errors))
    for kind, path in write_diagnostics(result, output_dir).items():
        logger.info("wrote %s (%s)", path, kind)
    return 0


def _command_segment(args: argparse.Namespace) -> int:
    from .factory import load_model
    from .inference import segment_files

    _existing_file(args.checkpoint, "--checkpoint")
    for image in args.images:
        _existing_file(image, "image")
    _writable_dir(args.output_dir, "--output-dir")
    model, config = load_model(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    image_size = args.image_size if args.image_size is not None else config.data.image_size
    if image_size is None:
        raise ValueError("the model was trained without a fixed image size: pass --image-size")
    written = segment_files(model, args.images, args.output_dir, image_size, _settings(args, model))
    for path in written:
        print(path)
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        data=args.data,
        output_dir=args.output_dir,
        image_size=args.image_size,
        pretrain_iterations=args.pretrain_iterations,
        alternate_iterations=args.alternate_iterations,
        seed=args.seed,
        samples=args.samples,
    )
    return 0


def _command_flops(args: argparse.Namespace) -> int:
    from .profiling import ProfileSettings, run_table_xi

    settings = ProfileSettings(
        image_size=args.image_size,
        num_classes=args.num_classes,
        image_channels=args.image_channels,
        steps=args.steps,
        segmentor=args.segmentor,
        refiner_channels=args.refiner_channels,
    )
    report = run_table_xi(
        settings,
        args.methods,
        timed=args.time,
        threads=args.threads,
        repeats=args.repeats,
        markdown=args.markdown,
        csv_path=args.csv,
    )
    print(report, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hidiff",
        description="HiDiff: a segmentor refined by a binarised Bernoulli diffusion model on packed binary kernels.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    from .data.registry import DATASETS

    train = commands.add_parser("train", help="pre-train the segmentor, then alternate-collaborative training")
    train.add_argument("--config", help="YAML config (see configs/); defaults apply to missing keys")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.batch_size=8 (repeatable)",
    )
    train.add_argument("--resume", help="checkpoint to continue from (e.g. runs/x/latest.pt)")
    train.add_argument(
        "--overwrite", action="store_true", help="start afresh in an output_dir that holds a run, deleting its files"
    )
    train.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    train.set_defaults(handler=_command_train)

    evaluate = commands.add_parser("evaluate", help="Dice/HD95/IoU/recall/accuracy of the segmentor and of HiDiff")
    evaluate.add_argument("--checkpoint", required=True, help="trainer checkpoint (best.pt or latest.pt)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--data-root", default=None, help="dataset folder (default: the one in the checkpoint)")
    evaluate.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default=None,
        help="evaluate on another registered dataset (cross-dataset, e.g. kvasir -> cvc) at the checkpoint's "
        "training resolution; give its folder with --data-root (default: the checkpoint's dataset)",
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=8)
    evaluate.add_argument(
        "--window",
        type=_size,
        default=None,
        help="sliding-window size (default: the crop size of DRIVE, CHASE_DB1)",
    )
    evaluate.add_argument("--no-refine", action="store_true", help="evaluate the segmentor only")
    evaluate.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        default=None,
        help="compare HiDiff with its segmentor per image over these sampling seeds, with a bootstrap CI",
    )
    evaluate.add_argument("--output", help="write the results as JSON")
    _add_sampling_arguments(evaluate)
    evaluate.set_defaults(handler=_command_evaluate)

    select = commands.add_parser(
        "select",
        help="choose a checkpoint's refinement settings on a validation split and store them in it",
        description="Evaluates every (steps, samples) pair of the grid and the segmentor alone on the split; stores "
        "the setting with the best Dice, or refinement off when none beats the segmentor, as the checkpoint's "
        "default (what model.segment(x), evaluate and segment use). Training does this at its end.",
    )
    _add_checkpoint_and_data_arguments(select, "dataset split to choose on (default: val; never the test)")
    select.add_argument(
        "--grid-steps",
        type=int,
        nargs="+",
        default=[1, 2, 5, 0],
        help="reverse-step counts to try, 0 for all T (default: 1 2 5 0)",
    )
    select.add_argument(
        "--grid-samples", type=_positive_int, nargs="+", default=[1, 4, 16], help="ensemble sizes (default: 1 4 16)"
    )
    select.add_argument("--dry-run", action="store_true", help="print the table, leave the checkpoint unchanged")
    select.add_argument(
        "--sampler", choices=Sampler.choices(), default=None, help="default: the model's stored sampler"
    )
    select.add_argument("--seed", type=_seed, default=None, help="sampling seed of every trial (default: stored)")
    select.add_argument("--no-ema", action="store_true", help="choose for the raw refiner weights, not the EMA")
    select.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    select.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's choice)")
    select.set_defaults(handler=_command_select)

    diagnose = commands.add_parser(
        "diagnose",
        help="refiner calibration per timestep and reverse-chain statistics, with figures",
        description="Per timestep: true flip rate vs mean eps_hat, eps BCE vs the constant and the prior-only "
        "Bayes denoiser, Dice of y_t and of y0_hat; per sampler step: Dice of the chain state and the fraction "
        "flipped. Writes diagnostics.json/.md, reliability.png and chain.png.",
    )
    _add_checkpoint_and_data_arguments(diagnose, "dataset split (default: val)")
    diagnose.add_argument("--max-images", type=_positive_int, default=None, help="measure only the first N images")
    diagnose.add_argument(
        "--output-dir", default=None, help="where the figures and tables go (default: beside the checkpoint)"
    )
    diagnose.add_argument(
        "--no-prior-errors",
        action="store_true",
        help="skip the table of the prior's errors (Dice, BCE, false-positive blobs, missed components, boundary "
        "share) on the training images against the diagnosed split",
    )
    _add_sampling_arguments(diagnose, ensemble=False)
    diagnose.set_defaults(handler=_command_diagnose)

    segment = commands.add_parser("segment", help="segment image files: masks (PNG) and overlay figures")
    segment.add_argument("images", nargs="+", help="image files (JPEG, PNG, TIFF, ...)")
    segment.add_argument("--checkpoint", required=True)
    segment.add_argument("--output-dir", default="masks")
    segment.add_argument(
        "--image-size", type=_size, default=None, help="model input size, a multiple of 32 (default: the training size)"
    )
    _add_sampling_arguments(segment)
    segment.set_defaults(handler=_command_segment)

    demo = commands.add_parser("demo", help="train a small HiDiff on CPU; segmentor vs HiDiff, binary vs float")
    demo.add_argument("--data", default=None, help="Kvasir-SEG folder (default: the embedded synthetic data)")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument(
        "--image-size", type=_size, default=None, help="default: 64 (synthetic) or 128 (Kvasir-SEG)"
    )
    demo.add_argument("--pretrain-iterations", type=_positive_int, default=None)
    demo.add_argument("--alternate-iterations", type=_positive_int, default=None)
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help="ensemble size of the refinement (default: chosen on validation among 1, 4 and 16)",
    )
    demo.set_defaults(handler=_command_demo)

    from .profiling import METHODS, SEGMENTORS

    flops = commands.add_parser(
        "flops",
        help="Table XI: FLOPs/BOPs/OPs and storage of MERIT, BerDiff, PD-DDPM, MedSegDiff-V2 and HiDiff",
        description="Counts each network once (one forward) and reports segmentor + refiner x steps; "
        "optionally times one inference of each method on this CPU (--time).",
    )
    flops.add_argument("--image-size", type=_positive_int, default=256, help="input resolution (default: 256)")
    flops.add_argument("--num-classes", type=_positive_int, default=1, help="K, mask channels (default: 1)")
    flops.add_argument("--image-channels", type=_positive_int, default=3, help="image channels (default: 3)")
    flops.add_argument(
        "--steps", type=_positive_int, default=10, help="sampling steps of every diffusion model (default: 10)"
    )
    flops.add_argument(
        "--segmentor", choices=SEGMENTORS, default="merit", help="HiDiff's segmentor (PD-DDPM always uses MERIT)"
    )
    flops.add_argument(
        "--refiner-channels", type=_positive_int, default=128, help="HiDiff refiner width C (default: 128)"
    )
    flops.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rows to compute (default: all)"
    )
    flops.add_argument("--time", action="store_true", help="also time one inference per method (slow at 256)")
    flops.add_argument("--threads", type=_positive_int, default=2, help="CPU threads (default: 2)")
    flops.add_argument(
        "--repeats", type=_positive_int, default=3, help="timed runs per measurement, median kept (default: 3)"
    )
    flops.add_argument("--markdown", help="also write the Markdown table to this file")
    flops.add_argument("--csv", help="also write the table as CSV to this file")
    flops.set_defaults(handler=_command_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and exit status 2
        if args.debug:
            raise
        logger.error("%s (run with --debug for the traceback)", _one_line(error))
        return 2


def _one_line(error: BaseException) -> str:
    """The error's message on one line; prefixed with its type when that is not one of the usual input errors."""
    message = " ".join(str(error).split()) or repr(error)
    if isinstance(error, (ValueError, TypeError, OSError)):
        return message
    return f"{type(error).__name__}: {message}"


if __name__ == "__main__":
    sys.exit(main())
