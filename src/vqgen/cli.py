"""The ``vqgen`` command line: thin wrappers over library functions.

Each area registers its subcommands from its own ``cli`` module (``register(subparsers)``);
handlers import their heavy dependencies lazily so ``vqgen --help`` stays fast.
A ``VqgenError`` is printed as one line (``vqgen: error: ...``) with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from vqgen import __version__
from vqgen.errors import ConfigWarning, VqgenError

# Modules that define ``register(subparsers)``; one line per area.
COMMAND_MODULES = [
    "vqgen.data.cli",
    "vqgen.shapes.cli",  # adds `data shapes` to the data group (a domain brings its own data set)
    "vqgen.eval.cli",
    "vqgen.motion.cli",  # adds `data motion` and `eval motion` (after eval.cli, which names the eval group)
    "vqgen.serve.cli",
    "vqgen.tokenizer.cli",
    "vqgen.transformer.cli",
    "vqgen.transformer.hierarchical_cli",  # `vqgen hierarchical train/build` (CogView2 hierarchy)
    "vqgen.rerank.cli",
    "vqgen.superres.cli",
    "vqgen.diffusion.cli",  # `vqgen diffusion train|pipeline` (Imagen cascade)
    "vqgen.pipelines.cli",
    "vqgen.video.cli",  # `vqgen video encode|train|build|generate|eval` (CogVideo)
    "vqgen.pipelines.edit_cli",  # `vqgen edit` (CogLM text-guided editing) and `vqgen eval edits`
    "vqgen.scale_cli",  # `vqgen plan` (memory/throughput per GPU) and `vqgen export` (sharded checkpoint -> model)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgen",
        description="Train and serve token-based image generators: an image tokenizer (ViT-VQGAN) "
                    "turns images into codes, a transformer learns to write them.",
    )
    parser.add_argument("--version", action="version", version=f"vqgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, ConfigWarning):
        return f"vqgen: warning: {message}\n"
    return _plain_format(message, category, filename, lineno, line)


_plain_format = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning  # a ConfigWarning is one line, like errors
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # a command group without a subcommand: print that group's help
        (getattr(args, "group_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except VqgenError as e:
        print(f"vqgen: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError) as e:
        # a path given on the command line cannot be used (a file where a folder goes, no permission)
        where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        print(f"vqgen: error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqgen: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed, a count that may be zero), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0, else a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def add_group(sub, name: str, help: str, description: str | None = None):
    """Add a command group (e.g. ``vqgen data``) and return its sub-parsers. Asked again for the
    same name, it returns the same sub-parsers: a domain package adds its commands to a group."""
    groups = sub.__dict__.setdefault("_vqgen_groups", {})
    if name not in groups:
        group = sub.add_parser(name, help=help, description=description or help)
        group.set_defaults(group_parser=group, func=None)
        groups[name] = group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    return groups[name]


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The shared ``--set field.sub=value`` config override option."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field by name, e.g. --set quantizer.codebook_size=1024 "
                             "(repeatable; unknown fields and wrong types are errors)")
