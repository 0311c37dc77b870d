"""Weight initializers matching the PyTorch models the checkpoints come from.

Flax's defaults (LeCun normal kernels, zero biases) differ from PyTorch's, and
training from scratch should start from the distribution the reference
results were obtained with.

May import: flax, jax.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

# torch.nn.init.kaiming_normal_ defaults: mode='fan_in', gain sqrt(2), a plain
# (untruncated) normal. Flax's fan_in is prod(kernel.shape[:-1]) for both HWIO
# conv kernels and (in, out) dense kernels, as in PyTorch.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# PyTorch's default Conv2d/Linear weight init, kaiming_uniform_(a=sqrt(5)):
# U(-b, b) with b = sqrt(1 / fan_in).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv2d/Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Args:
        fan_in: inputs per output unit of the layer (k_h·k_w·C_in for a conv).

    Returns:
        A Flax initializer `(key, shape, dtype) -> array`.
    """
    bound = 1.0 / (fan_in ** 0.5)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
