"""XLA compile options for the model steps (train, eval, gradients).

Recent jaxlibs hand XLA:CPU's reductions and elementwise fusions to YNNPACK
("ynn fusions"). For our training steps these are slower than XLA's own loop
fusions: with them cleared, a MnistNet step runs 1.3-1.4x and a ResNet-20
step 1.1-1.2x faster at batch 128 on 2 cores (BUILD_NOTES.md, "XLA:CPU's YNNPACK
fusions"). The option goes to each step's `jax.jit(compiler_options=...)`,
not into `XLA_FLAGS`, so nothing process-wide changes; it applies only when
the default backend is the CPU, only if this jaxlib knows the option, and
never over a user's own `--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS.
Set `KPJAX_TUNED_XLA=0` to compile with XLA's defaults.

May import: jax.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def step_compiler_options() -> dict[str, str]:
    """The options `jit_step` compiles with; {} where they do not apply."""
    if os.environ.get("KPJAX_TUNED_XLA", "1") == "0":
        return {}
    if _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    if jax.default_backend() != "cpu":
        return {}
    options = {_YNN_OPTION: ""}
    try:
        jax.jit(jnp.sum, compiler_options=options).lower(
            jnp.zeros(2, jnp.float32)).compile()
    except Exception:  # an older jax (no keyword) or jaxlib (no such option)
        return {}
    return options


def jit_step(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """`jax.jit(fun, **jit_kwargs)`, compiled with `step_compiler_options()`.

    Called with traced arguments (inside another jit, grad or vmap) it runs as
    a plain jit: XLA takes compiler options only for a top-level computation.
    """
    plain = jax.jit(fun, **jit_kwargs)
    options = step_compiler_options()
    if not options:
        return plain
    tuned = jax.jit(fun, compiler_options=options, **jit_kwargs)

    @functools.wraps(fun)
    def step(*args: Any, **kwargs: Any) -> Any:
        traced = any(isinstance(leaf, jax.core.Tracer)
                     for leaf in jax.tree.leaves((args, kwargs)))
        return (plain if traced else tuned)(*args, **kwargs)

    step.lower = tuned.lower
    return step
