"""What the command lines (train.py, eval.py, export.py, experiments/compare.py) share: a mistake
in what the user gave (a config key, a data record, a file, a model this library cannot load)
ends the run with one line naming it, `<program>: error: <message>`, and exit status 1. Those
messages already say what is wrong and where (file, line and field; the config key), so a
traceback would only bury them. Any other exception is a bug and keeps its traceback.

The same holds before `main` runs, while absl parses the flags: a `--config=` file that does not
exist or defines no `get_config()`, and an override of a key no run config has
(`--config.train.stpes=4`), fail inside ml_collections' flag parsing, with its traceback,
unless caught there."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from hafrm_jax.configuration import (ConfigError, free_form_group, is_known_key,
                                     unknown_key_message)
from hafrm_jax.data.readers import DataError
from hafrm_jax.hf.config import UnsupportedModelError
from hafrm_jax.train.loop import NonFiniteError

# Raised with a message meant for the user; FileNotFoundError and FileExistsError name the path.
USER_ERRORS = (ConfigError, DataError, UnsupportedModelError, NonFiniteError, FileNotFoundError,
               FileExistsError)


def _fail(message: str) -> NoReturn:
    """Exit with status 1 and `<program>: error: <message>`, the message on one line (a quoted
    exception, such as the hub client's when offline, may run over several)."""
    one_line = re.sub(r"\s*\n\s*", " ", message.strip())
    sys.exit(f"{os.path.basename(sys.argv[0])}: error: {one_line}")


# The config flags defined through `define_config_file`, for `parse_flags`: name -> default file.
_CONFIG_FLAGS: dict[str, str | None] = {}
# Flags defined through this module belong to its caller (train.py's --helpshort lists --config).
flags.disclaim_key_flags()


def _config_files_given(argv: list[str], name: str) -> list[tuple[str, str]]:
    """(argument, file) for each `--name=path[:arg]` or `--name path[:arg]` in argv."""
    given = []
    for i, arg in enumerate(argv[1:], 1):
        match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg)
        if match and match.group(1):
            given.append((arg, match.group(2)))
        elif match and i + 1 < len(argv):
            given.append((f"{arg} {argv[i + 1]}", argv[i + 1]))
    return [(arg, value.split(":", 1)[0]) for arg, value in given]


def _overrides(argv: list[str], name: str) -> list[tuple[str, str]]:
    """(argument, key) for each override `--name.key=value` in argv."""
    pattern = rf"--?(?:no)?{re.escape(name)}\.([^=]+)"
    return [(arg, match.group(1)) for arg in argv[1:] if (match := re.match(pattern, arg))]


def _override_error(argv: list[str], name: str, error: Exception) -> str:
    """The message for ml_collections' error on an override whose key the config lacks: the
    first key no run config has, named with a hint; else a key of a free-form group
    (data.options.x) that this recipe does not set, which only the whole group can add."""
    overrides = _overrides(argv, name)
    for arg, key in overrides:
        if not is_known_key(key):
            return f"{arg}: {unknown_key_message(key)}"
    for arg, key in overrides:
        group = free_form_group(key)
        if group:
            leaf, value = key[len(group) + 1:], arg.split("=", 1)[-1]
            whole = "{...}" if "." in leaf else f"{{'{leaf}': {value}}}"
            return (f"{arg}: the recipe sets no {key}; {group} takes new keys only as a whole "
                    f"group, e.g. --{name}.{group}=\"{whole}\" (replacing the recipe's)")
    raise error


def define_config_file(name: str, default: str | None, help_string: str) -> flags.FlagHolder:
    """ml_collections' `config_flags.DEFINE_config_file`, locked (a misspelt key in code fails),
    with its mistakes reported by `parse_flags`. A default recipe is loaded, and its overrides
    applied, right here, so an override's error is reported here too."""
    _CONFIG_FLAGS[name] = default
    try:
        return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
    except (AttributeError, KeyError) as error:
        _fail(_override_error(sys.argv, name, error))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (its usage errors included), with the config flags' mistakes in one
    line: a config file that does not exist or has no `get_config()`, an override of a key
    that the config lacks, an override without a config to override."""
    for name, default in _CONFIG_FLAGS.items():
        files = _config_files_given(argv, name)
        for arg, path in files:
            if not os.path.isfile(path):
                _fail(f"{arg}: no such config file")
        overrides = _overrides(argv, name)
        if overrides and not files and default is None:  # absl: "Unknown command line flag"
            _fail(f"{overrides[0][0]}: overrides a key of --{name}, which is not given (give "
                  f"--{name}=<recipe file> too)")
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: an override's key is missing
        if "has no attribute 'get_config'" in str(error):  # the recipe module lacks it
            recipes = [arg for name in _CONFIG_FLAGS for arg, _ in _config_files_given(argv, name)]
            _fail(f"{', '.join(recipes) or 'the default --config'}: the recipe defines no "
                  "get_config() (a config file returns its ConfigDict from get_config())")
        overridden = [name for name in _CONFIG_FLAGS if _overrides(argv, name)]
        if not overridden:
            raise
        _fail(_override_error(argv, overridden[0], error))


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
            _fail(str(error))

    app.run(main_reporting_user_errors, flags_parser=parse_flags)
