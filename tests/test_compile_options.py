"""Tests for kpjax.train.compile_options: when the step options apply, and that they
change how a step compiles but not what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import models, train
from kpjax.train import compile_options

_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@pytest.fixture
def fresh_options(monkeypatch):
    monkeypatch.delenv("KPJAX_TUNED_XLA", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    compile_options.step_compiler_options.cache_clear()
    yield monkeypatch
    compile_options.step_compiler_options.cache_clear()


def test_options_are_known_to_this_jaxlib_or_empty(fresh_options):
    options = compile_options.step_compiler_options()
    assert options in ({}, {_OPTION: ""})
    if jax.default_backend() != "cpu":
        assert options == {}


def test_env_opt_out_and_user_xla_flags_win(fresh_options):
    fresh_options.setenv("KPJAX_TUNED_XLA", "0")
    assert compile_options.step_compiler_options() == {}
    compile_options.step_compiler_options.cache_clear()
    fresh_options.delenv("KPJAX_TUNED_XLA")
    fresh_options.setenv("XLA_FLAGS", f"--{_OPTION}=reduce")
    assert compile_options.step_compiler_options() == {}


def test_jit_step_keeps_jit_arguments(fresh_options):
    f = compile_options.jit_step(lambda x, n: x * n, static_argnames="n")
    np.testing.assert_array_equal(f(jnp.arange(3.0), n=2), [0.0, 2.0, 4.0])


def test_train_step_compiles_without_ynn_fusions_and_computes_the_same(fresh_options):
    if not compile_options.step_compiler_options():
        pytest.skip("the step options do not apply to this backend/jaxlib")
    spec = models.get_model("mnistnet")
    variables = spec.module.init(
        jax.random.PRNGKey(0), np.zeros((1, *spec.input_shape), np.float32))
    tx = train.make_optimizer(0.1, momentum=0.9, nesterov=False)
    plain = train.make_train_step(spec.module.apply, tx, jit=False)
    tuned = train.make_train_step(spec.module.apply, tx)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((8, *spec.input_shape), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 8))

    def state():
        return train.create_train_state(variables["params"], tx, jax.random.PRNGKey(0))

    assert "__ynn_fusion" not in tuned.lower(state(), images, labels).compile().as_text()
    want, _ = jax.jit(plain)(state(), images, labels)
    got, _ = tuned(state(), images, labels)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 want.params, got.params)


def test_jit_step_nests_inside_another_jit(fresh_options):
    inner = compile_options.jit_step(lambda x: jnp.sum(x * x))
    outer = jax.jit(lambda x: inner(x) + 1.0)
    np.testing.assert_allclose(outer(jnp.arange(3.0)), 6.0)
    np.testing.assert_allclose(jax.grad(inner)(jnp.arange(3.0)), [0.0, 2.0, 4.0])
