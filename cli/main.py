"""The seqserve command: train -> export -> validate -> generate (and bench, quickstart)."""

from __future__ import annotations

import importlib

import typer

from cli.common import handle_errors

app = typer.Typer(
    name="seqserve",
    help="Sequence models from PyTorch training to production inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# name -> module under cli/ holding `command`. Those modules import torch/onnx only inside the
# command functions, so `seqserve --help` stays instant.
COMMANDS = {
    "quickstart": "cli.quickstart",
    "train": "cli.train",
    "export": "cli.export",
    "validate": "cli.validate",
    "generate": "cli.generate",
    "classify": "cli.classify",
    "bench": "cli.bench",
    "package": "cli.package",
    "serve": "cli.serve",
    "loadtest": "cli.loadtest",
}

# name -> module holding `app`, a group of subcommands (seqserve deploy kubernetes).
GROUPS = {
    "deploy": "cli.deploy",
}

for _name, _module in COMMANDS.items():
    app.command(_name)(handle_errors(importlib.import_module(_module).command))
for _name, _module in GROUPS.items():
    app.add_typer(importlib.import_module(_module).app, name=_name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
