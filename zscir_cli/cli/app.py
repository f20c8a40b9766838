"""The `zscir` app: this module only assembles commands (each lives in its own module)."""

from __future__ import annotations

import functools
import gc
import sys
import traceback

import typer

from zscir_cli import __version__
from zscir_cli.cli import (
    cache,
    compose_train,
    demo,
    evaluate,
    index,
    map_train,
    models,
    prepare,
    pretrain,
    query,
    serve,
    submit,
    synth,
)
from zscir_cli.cli.console import debug_enabled, error, setup_logging
from zscir_cli.core.errors import EXIT_USER_ERROR, UserError, os_error

try:  # Typer >= 0.20 carries its own copy of Click
    from typer.exceptions import TyperException as _ParseError
except ImportError:  # pragma: no cover - older Typer on Click
    from click import ClickException as _ParseError

app = typer.Typer(
    name="zscir", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Zero-shot composed image retrieval: a reference image plus a modification text.",
    context_settings={"help_option_names": ["-h", "--help"]})

app.add_typer(prepare.app, name="prepare")
app.command(help="Train the base CLIP of the shapes world from scratch.")(pretrain.pretrain)
app.command("map-train", help="Stage I: map images to a pseudo-word (token learner, VSI, soft text "
                               "alignment).")(map_train.map_train)
app.command(help="Write synthetic triplets from captions (template) or scene graphs (scene).")(synth.synth)
app.command("compose-train", help="Stage II: composing adapters trained on synthetic triplets with hard "
                                   "negative mining.")(compose_train.compose_train)
app.command(help="Embed a gallery (a folder or a prepared data set) into a faiss index.")(index.index)
app.command(help="Rank an index for a reference image plus a modification text.")(query.query)
app.command(help="Serve queries over HTTP, with a page to walk a gallery.")(serve.serve)
app.command("eval", help="Evaluate methods on a benchmark split (shapes, FashionIQ, CIRR, CIRCO).")(
    evaluate.evaluate)
app.command(help="Write test-server prediction files (CIRR, CIRCO), validated.")(submit.submit)
app.command(help="Score prediction files offline against a split with ground truth.")(submit.score)
app.command(help="Prepare, pretrain, index, query and evaluate on the shapes world, offline.")(demo.demo)
app.command(help="List the architectures --model accepts.")(models.models)
app.add_typer(cache.app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zscir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Zero-shot composed image retrieval, from mapping to composing."""


def plain_help(command) -> None:
    """Help as Click writes it, for this command and every one below it.

    Rich help reads help texts as markup, which took our "[default: ...]" for tags (leaving
    "Cache root ." behind), and cuts long option names to fit its table at 80 columns."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        if sub.short_help is None and sub.help:  # listed whole, wrapped, not cut at 45 characters
            sub.short_help = sub.help.strip().split("\n\n")[0]
        plain_help(sub)


@functools.cache
def click_command():
    """The Click command tree of the app (what `zscir` runs), built once per process: Typer reads
    every command's signature and type hints to build it (a tenth of a second), and a tree serves
    any number of runs (each parses into a context of its own)."""
    command = typer.main.get_command(app)
    plain_help(command)
    return command


def run(argv: list[str] | None = None) -> int:
    """Run the app and return its exit code: 0 ok, 2 bad input, 1 a bug, 130 interrupted."""
    setup_logging()
    try:
        click_command().main(args=argv, prog_name="zscir", standalone_mode=False)
        return 0
    except typer.Exit as e:
        return e.exit_code
    except _ParseError as e:  # usage errors: the parser's own message, exit 2
        e.show()
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        error("interrupted; completed artifacts are kept, the partial one was removed.")
        return 130
    except UserError as e:
        if debug_enabled():
            traceback.print_exc()
        error(str(e))
        return EXIT_USER_ERROR
    except OSError as e:  # the machine refused (permissions, disk full, a folder for a file)
        if debug_enabled():
            traceback.print_exc()
        error(str(os_error(e)))
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001 - a bug: say so, show the traceback on request
        if debug_enabled():
            traceback.print_exc()
        error(f"{type(e).__name__}: {e}. This is a bug in zscir; run again with ZSCIR_DEBUG=1 "
              "for the traceback and report it.")
        return 1


def main() -> None:
    code = run()
    # Everything Python does at exit still runs (other threads joined, atexit handlers, streams
    # flushed, modules cleared); frozen objects are left out of the last garbage collection over
    # everything torch, OpenCLIP and faiss allocated, which took 2-3 s after the result was out
    # (benchmarks/cli_exit.py)
    gc.freeze()
    sys.exit(code)
