"""What the command lines (train.py, eval.py, export.py, experiments/compare.py) share: a mistake
in what the user gave (a config key, a data record, a file, a model this library cannot load)
ends the run with one line naming it, `<program>: error: <message>`, and exit status 1. Those
messages already say what is wrong and where (file, line and field; the config key), so a
traceback would only bury them. Any other exception is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from absl import app

from hafrm_jax.configuration import ConfigError
from hafrm_jax.data.readers import DataError
from hafrm_jax.hf.config import UnsupportedModelError
from hafrm_jax.train.loop import NonFiniteError

# Raised with a message meant for the user; FileNotFoundError and FileExistsError name the path.
USER_ERRORS = (ConfigError, DataError, UnsupportedModelError, NonFiniteError, FileNotFoundError,
               FileExistsError)


def run(main: Callable[[list[str]], None]) -> None:
    """absl's `app.run(main)`: this library's progress logged (INFO), absl's and JAX's chatter
    not; USER_ERRORS reported as `<script's file name>: error: <message>` on stderr (exit
    status 1)."""

    def main_reporting_user_errors(argv: list[str]) -> None:
        logging.getLogger().setLevel(logging.INFO)  # this library's progress notes
        logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
        logging.getLogger("jax").setLevel(logging.WARNING)  # "Unable to initialize backend tpu"
        try:
            return main(argv)
        except USER_ERRORS as error:
            sys.exit(f"{os.path.basename(sys.argv[0])}: error: {error}")

    app.run(main_reporting_user_errors)
