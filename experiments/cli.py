"""Command lines of the experiment binaries: flags derived from a config class.

`define_flags(ConfigClass)` defines one absl flag per config field (nested
`SGD` fields become <field>_lr, <field>_momentum, ...) with the field's
default and help, plus --workdir and the launch flags of several processes
(`experiments.processes`: started before the binary's main); `build_config(ConfigClass, values)` turns
parsed flag values (a plain dict, `FLAGS.flag_values_dict()`) back into a
validated config; `summary_main(ConfigClass, run)` is the `main` of a
binary whose `run(config, workdir)` returns its summary. Flags are defined only when a binary runs as a script
(`run_main`), so importing experiments.train, .prune and .early into one
process (a notebook, the tests) defines nothing global.

Every bad value stops the binary with one `usage error:` line and exit
status 2, never a traceback: ValueError, OSError (missing files) and
app.UsageError raised while building the config or running are caught at
`run_main`'s boundary. Tracebacks stay for genuine bugs (other exceptions),
and `--verbosity=1` shows them for these too.

May import: absl, experiments.fields, experiments.processes, kpjax.
"""

from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags, logging

from experiments import processes
from experiments.fields import SGD
from kpjax import pruning


def _flag_fields(config_cls: type) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(flag name, field path, default, metadata) of every flag of a config class."""
    out = []
    for f in dataclasses.fields(config_cls):
        meta = dict(f.metadata)
        if meta.get("kind") == "sgd":
            for g in dataclasses.fields(SGD):
                sub = dict(g.metadata)
                sub["help"] = f"{meta['help']}: {sub['help']}"
                out.append((f"{f.name}_{g.name}", f"{f.name}.{g.name}", getattr(f.default, g.name), sub))
        else:
            out.append((f.name, f.name, f.default, meta))
    return out


def _help(name: str, meta: Mapping[str, Any]) -> str:
    if name == "methods":
        listing = "; ".join(f"{m}: {pruning.get_method(m).description}" for m in sorted(pruning.METHODS))
        return f"{meta['help']}, comma-separated. Known: {listing}"
    return meta["help"]


def define_flags(config_cls: type, default_workdir: str | None) -> None:
    """Defines the flags of `config_cls` and --workdir on absl's FLAGS.

    They are registered as the main module's (absl keys the main module by
    sys.argv[0]), so `--help` lists every flag the binary reads.
    """
    own = {"module_name": sys.argv[0]}
    for name, _, default, meta in _flag_fields(config_cls):
        kind, text = meta["kind"], _help(name, meta)
        if kind == "bool":
            flags.DEFINE_bool(name, default, text, **own)
        elif kind == "int":
            flags.DEFINE_integer(name, default, text, **own)
        elif kind == "float":
            flags.DEFINE_float(name, default, text, **own)
        elif kind == "str":
            flags.DEFINE_string(name, default, text, **own)
        elif kind == "enum":
            flags.DEFINE_enum(name, default, list(meta["choices"]), text, **own)
        elif kind in ("floats", "ints", "strs"):
            shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in default]
            flags.DEFINE_list(name, shown, text, **own)
        else:
            raise TypeError(f"field {name}: unknown flag kind {kind!r}")
    flags.DEFINE_string("workdir", default_workdir,
                        "output directory; a rerun with the same flags resumes from it", **own)
    processes.define_flags(sys.argv[0])


def own_flag_values() -> dict[str, Any]:
    """The parsed values of the flags `define_flags` made (not absl's own)."""
    return {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(sys.argv[0])}


def build_config(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The config of parsed flag values (names as `define_flags` made them).

    Raises:
      ValueError: a value out of range, an unknown name, absent data, an
        infeasible compression (the config's own validation).
    """
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, path, _, _ in _flag_fields(config_cls):
        if name not in values:
            continue
        value = values[name]
        if "." in path:
            outer, inner = path.split(".")
            nested.setdefault(outer, {})[inner] = value
        else:
            kwargs[path] = value
    for outer, fields in nested.items():
        kwargs[outer] = SGD(**fields)
    return config_cls(**kwargs)


def run_main(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)`, with bad input stopping on one line instead of a traceback."""

    def guarded(argv: list[str]) -> Any:
        if len(argv) > 1:
            _usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            processes.start(own_flag_values())  # before anything starts a JAX backend
            return main(argv)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted — rerun the same command to resume\n")
            sys.exit(130)
        except (app.UsageError, ValueError, OSError, json.JSONDecodeError) as e:
            if logging.get_verbosity() >= logging.DEBUG:
                raise
            _usage_error(str(e))

    # JAX probes for a TPU at start and logs its absence at INFO on every CPU
    # run; that line says nothing about the run.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    app.run(guarded)


def _usage_error(message: str) -> None:
    sys.stderr.write(f"usage error: {message}\n(--help lists the flags)\n")
    sys.exit(2)


class QuietOrbax(std_logging.Filter):
    """Drops orbax's INFO records (a dozen lines per checkpoint)."""

    def filter(self, record):
        return (record.levelno >= std_logging.WARNING
                or f"{os.sep}orbax{os.sep}" not in record.pathname)


def orbax_teardown(unraisable) -> bool:
    """Whether an unraisable exception is orbax's teardown after a failed
    restore: when one array of a damaged checkpoint fails to read, orbax
    raises (kpjax reports it in one line, `kpjax.io.checkpoints`) and closes
    its event loop while other reads are in flight; their coroutines are
    then destroyed and TensorStore's threads call into the closed loop,
    each printing a traceback that says nothing more."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def quiet_orbax() -> None:
    """Drops orbax's INFO log records and its teardown tracebacks (`orbax_teardown`)."""
    logging.get_absl_handler().addFilter(QuietOrbax())
    previous = sys.unraisablehook

    def hook(unraisable):
        if not orbax_teardown(unraisable):
            previous(unraisable)
    sys.unraisablehook = hook


def summary_main(config_cls: type, run: Callable[[Any, str], str]) -> Callable[[list[str]], None]:
    """The `main(argv)` of an experiment binary: the parsed flags become a
    `config_cls` (`build_config`), `run(config, --workdir)` runs it and its
    summary is printed."""
    def main(argv) -> None:
        del argv
        values = flags.FLAGS.flag_values_dict()
        quiet_orbax()
        print(run(build_config(config_cls, values), values["workdir"]))
    return main
