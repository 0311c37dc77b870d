"""VGG-16 for CIFAR with BatchNorm, as in network slimming (Liu et al. 2017)
and the early-bird / Spline-EB code that builds on it.

Thirteen 3x3 convs (padding 1, no bias), each followed by BatchNorm and
ReLU; 2x2 max pooling after convs 2, 4, 7 and 10; 2x2 average pooling of the
final 2x2 map; one dense classifier on the 512 channels. Initialization as
in that code: conv kernels N(0, 2 / (9·C_out)), BatchNorm γ = 0.5 and β = 0,
the classifier N(0, 0.01²) with zero bias. 14,724,042 parameters at the
default widths.

May import: flax, jax, kpjax.models.
"""

from flax import linen as nn
import jax
import jax.numpy as jnp

from kpjax.models.convolutions import Im2colConv, smaller_than_kernel
from kpjax.models.mnistnet import max_pool_2x2

VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
VGG16_POOLS = (1, 3, 6, 9)  # indices of the convs followed by 2x2 max pooling

# torch.nn.BatchNorm2d's defaults (Flax's momentum weighs the old value).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5

# N(0, 2/n) with n = k·k·C_out: fan_out in Flax's HWIO convention.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGG(nn.Module):
    """conv3x3-BN-ReLU blocks with max pooling, average pooling, dense.

    Attributes:
        widths: output channels of each conv (VGG-16's by default); the
            structured pruner changes them.
        pools: indices of the convs followed by 2x2 max pooling.
        num_classes: outputs of the classifier.
    """

    widths: tuple[int, ...] = VGG16_WIDTHS
    pools: tuple[int, ...] = VGG16_POOLS
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of a batch of (B, 32, 32, 3) normalized images; `train`
        uses and updates BatchNorm's batch statistics."""
        for i, width in enumerate(self.widths):
            # XLA:CPU's convolution is ~50x slower on maps smaller than the
            # kernel (VGG-16's 2x2 maps): those go through im2col.
            conv = Im2colConv if smaller_than_kernel(x, (3, 3)) else nn.Conv
            x = conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                     kernel_init=_conv_init, name=f"conv{i + 1}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                             epsilon=_BN_EPSILON, scale_init=nn.initializers.constant(0.5),
                             name=f"bn{i + 1}")(x)
            x = nn.relu(x)
            if i in self.pools:
                x = max_pool_2x2(x)
        b, h, w, c = x.shape
        x = x[:, :h - h % 2, :w - w % 2].reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        x = jnp.reshape(x, (b, -1))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        bias_init=nn.initializers.zeros, name="classifier")(x)
