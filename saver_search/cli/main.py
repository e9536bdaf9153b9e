"""Command line: ``python -m saver_search [SUBCOMMAND] ...``; without a subcommand it runs the search."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from saver_search.errors import InvalidParameter, SaverSearchError, StudyMismatch

# Each subcommand lives in its own module exposing ``register(subparsers)``; the module is
# imported only when its subcommand runs, so ``--help`` and the search never import torch.
SUBCOMMANDS: dict[str, str] = {
    "search": "saver_search.cli.search",
    "import": "saver_search.cli.importer",
    "costs": "saver_search.cli.costs",
    "plan": "saver_search.cli.plan",
    "cache": "saver_search.cli.cache",
    "report": "saver_search.cli.report",
    "export": "saver_search.cli.export",
    "predict": "saver_search.cli.predict",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _build_parser(command: str) -> argparse.ArgumentParser:
    import importlib

    parser = OneLineParser(
        prog="python -m saver_search",
        description="Find the cheapest tiny-model-first cascade for a large image classifier.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    importlib.import_module(SUBCOMMANDS[command]).register(subparsers)
    return parser


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def stage_range(text: str) -> tuple[int, int]:
    """``3`` or ``2..4``."""
    parts = text.split("..")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None:
        raise InvalidParameter("stages", f"must be a number of stages such as 3, or a range such as 2..4; got {text!r}")
    return low, high


def checkpoint_files(specs: Sequence[str], match: Callable[[str], str | None], models: Sequence[str],
                     among: str) -> dict[str, Path]:
    """``--checkpoint NAME=FILE`` options (``cache`` and ``predict``) as {model: file}: ``match`` gives the model of
    ``models`` a NAME means (None: none of them; ``among`` says where they come from); each file must exist."""
    found: dict[str, Path] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not (sep and name.strip() and file.strip()):
            raise SaverSearchError(f"--checkpoint {spec!r} must be NAME=FILE, e.g. --checkpoint resnet50=weights.pth")
        model = match(name.strip())
        if model not in models:
            raise SaverSearchError(f"--checkpoint names {model or name.strip()}, which is not {among} "
                                   f"({', '.join(models)})")
        path = Path(file.strip())
        if not path.is_file():
            raise SaverSearchError(f"checkpoint file {path} for {model} does not exist")
        found[model] = path
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv``, run the subcommand, and turn user errors into one line on stderr with exit code 2."""
    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # the reader stopped early (`costs --list '*' | head`, `--help | head`): nothing to add
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def _dispatch(args_list: list[str]) -> None:
    if args_list and args_list[0] in ("-h", "--help"):
        print(_overview())
        return
    if args_list and not args_list[0].startswith("-") and args_list[0] not in SUBCOMMANDS:
        print(f"error: unknown command '{args_list[0]}': use one of {', '.join(SUBCOMMANDS)}, or no command to "
              "search (see: python -m saver_search --help)", file=sys.stderr)
        sys.exit(2)
    command = args_list[0] if args_list and args_list[0] in SUBCOMMANDS else "search"
    if not (args_list and args_list[0] == command):
        args_list.insert(0, command)
    parser = _build_parser(command)
    args = parser.parse_args(args_list)
    args.argv = args_list[1:]
    run: Callable[[argparse.Namespace], int | None] = args.func
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main_thread else None
    if in_main_thread:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        try:
            code = run(args)
        except SaverSearchError as err:
            print(f"error: {cli_message(err)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as interrupt:
            print(str(interrupt) or "interrupted: finished work is kept; rerun the same command to resume.",
                  file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)
    finally:  # main() called in a process that goes on (a test, a notebook) leaves its Ctrl-C as it found it
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _interrupt_once(signum: int, frame: Any) -> None:
    """Ctrl-C: interrupt once, then ignore further Ctrl-C while the interrupted work is put back in order (a second
    one would break off the cleanup that queues the interrupted trial again). SQLAlchemy logs a traceback ("Error
    closing cursor") when the interrupt lands inside a fetch; the CLI's one line says what happened instead."""
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


# Python parameters (and study keys) that are not named like the flag that sets them.
FLAGS = {"overwrite": "--force", "force": "--force", "labels_path": "--labels", "labels_csv": "--labels",
         "predictions_path": "--predictions",
         "root": "--images", "path": "--data", "store_path": "--data", "skip_unreadable": "--on-corrupt skip",
         "n_classes": "--num-classes", "exit_index": "--exit", "checkpoints": "--checkpoint NAME=FILE", "threshold_mode": "--threshold", "objectives": "--pareto", "directions": "--pareto",
         "scores": "--score", "committee_members": "--committee"}
NOT_FLAGS = {"threshold_range": "the space's threshold.low/high", "threshold_grid": "the space's threshold.grid",
             "enumeration": "the space's enumeration (first_stages, committee_pool, four_stage_pool)",
             "format": "the saver_search version"}


def flag(name: str, value: str | None = None) -> str:
    """How the CLI names a library option: its flag, with the value unless it is a switch."""
    if name in NOT_FLAGS:
        return NOT_FLAGS[name]
    text = FLAGS.get(name, "--" + name.replace("_", "-"))
    return text if value in (None, "True") else f"{text} {value}"


def _flag_value(key: str, value: object) -> str:
    if key in ("objectives", "directions"):
        return "--pareto" if isinstance(value, (list, tuple)) and len(value) > 1 else "no --pareto"
    if value is None:
        return {"calibration": "all", "guarantee": "none"}.get(key, "none")
    if key == "stages" and isinstance(value, (list, tuple)):
        return f"{value[0]}..{value[1]}" if value[0] != value[1] else str(value[0])
    if key == "scores" and isinstance(value, (list, tuple)):
        return ",".join(value)
    return str(value)


def cli_message(err: SaverSearchError) -> str:
    """A library error in the CLI's terms: options become flags, study keys the flags that set them."""
    if isinstance(err, StudyMismatch):
        key, stored, given = err.key, _flag_value(err.key, err.stored), _flag_value(err.key, err.given)
        if key == "data":
            return (f"study '{err.study_name}' was created on other data (fingerprint {stored[:19]}..., this data "
                    f"{given[:19]}...): run it on the data it was created on, or pass another --study-name")
        if key in ("objectives", "directions"):
            return (f"study '{err.study_name}' was created with {stored}; this command has {given}: rerun with the "
                    "same choice to resume it, or pass another --study-name")
        return (f"study '{err.study_name}' was created with {flag(key)} {stored}; this command gives {given}: rerun "
                f"with {flag(key)} {stored} to resume it, or pass another --study-name to start a new study")
    return err.render(flag)


def _overview() -> str:
    return (
        "usage: python -m saver_search [SUBCOMMAND] [options]\n\n"
        "  (none) | search  find the cheapest cascade: --target NAME --max-drop PTS [--data STORE]\n"
        "  import           add a model's predictions to a store from CSV / .npz / .npy\n"
        "  costs            GMACs, GFLOPs and parameters of timm models at their real resolution\n"
        "  plan             which models to cache for a target, and the GPU-hours it takes (an estimate)\n"
        "  cache            run timm models over an image folder and store their predictions\n"
        "  report           plots and a Markdown summary of a stored search\n"
        "  export           the best cascade of a stored search as cascade.json\n"
        "  predict          run a cascade.json over a folder of images, with measured speed-up\n\n"
        "Run `python -m saver_search SUBCOMMAND --help` for a subcommand's options."
    )
