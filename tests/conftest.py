"""Suite-wide settings.

XLA's persistent compilation cache, in a temporary folder for this session:
the experiment tests, the README example and the notebook's kernel compile
the same steps from new closures (each `run(config, workdir)` builds its
own), and the cache turns those recompilations into lookups. It changes no
number: a cached executable is the compiler's output for the same program.
"""

import os
import tempfile

import jax
import pytest

# pytest-xdist's workers inherit the controller's environment: they share its
# cache (JAX writes entries atomically), and only the controller removes it.
_SHARED = os.environ.get("KPJAX_TEST_XLA_CACHE")
_CACHE = None if _SHARED else tempfile.TemporaryDirectory(prefix="kpjax-test-xla-cache-")
_CACHE_DIR = _SHARED or _CACHE.name
os.environ["KPJAX_TEST_XLA_CACHE"] = _CACHE_DIR
# The notebook's kernel is another process: it reads the environment.
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session", autouse=True)
def _remove_compilation_cache():
    yield
    if _CACHE is not None:
        _CACHE.cleanup()
