"""The first module the test processes' forkserver imports (`runs.PRELOAD`), in an interpreter
that has imported nothing of zscir's, Typer's or Rich's yet: every module the model layer (and
the demo job over it) loads on its own, read back by `runs.model_layer_modules` so that the
layering test need not pay for another interpreter's torch and OpenCLIP."""

import sys

import zscir_cli.jobs.demo.run  # noqa: F401
import zscir_cli.model.backbone  # noqa: F401
import zscir_cli.model.text  # noqa: F401

MODEL_LAYER = frozenset(sys.modules)
