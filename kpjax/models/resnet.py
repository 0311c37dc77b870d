"""CIFAR ResNets (He et al. 2016, §4.2) as in akamaster/pytorch_resnet_cifar10.

ResNet-(6n+2): a 3x3 stem conv, three stages of n basic blocks (16, 32, 64
channels; strides 1, 2, 2), global average pooling and a dense classifier.
Shortcuts are "option A": identity, or when the shape changes, spatial
subsampling ::2 and zero channel padding, without parameters.

May import: flax, jax, kpjax.models.
"""

from collections.abc import Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from kpjax.models import initializers

# torch.nn.BatchNorm2d defaults; Flax's momentum weighs the old running value
# (torch's momentum=0.1 weighs the new one).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _conv3x3(features: int, stride: int, name: str) -> nn.Conv:
    # Explicit symmetric padding 1 as in PyTorch: Flax's "SAME" pads only the
    # bottom/right for stride 2 on even inputs, which would shift every
    # strided conv by one pixel relative to imported weights.
    return nn.Conv(
        features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
        use_bias=False, kernel_init=initializers.kaiming_normal, name=name)


def stored_for_backward(x: jax.Array, key: jax.Array) -> jax.Array:
    """x, through a conditional that XLA:CPU does not fuse across (CPU only).

    Why: XLA:CPU feeds each weight-gradient convolution a batch-last
    transpose of the layer's input, and fuses into that transpose the
    elementwise chain that produced the input (BatchNorm, ReLU and the
    residual sums of up to three blocks), recomputing it in the transpose's
    cache-hostile order instead of reading the stored activation. Passing
    the activation through a `lax.cond` whose two branches return the same
    bits makes the transposes read it: a ResNet-20 training step runs ~1.4x
    faster on 2 cores (BUILD_NOTES.md, "Training throughput").
    `lax.optimization_barrier` does not do this: XLA:CPU removes barriers
    before fusion. Other backends get x itself (a conditional there costs a
    predicate read by the host).

    Args:
        x: an activation.
        key: any scalar the predicate may read; a weight, which is replicated
            under data parallelism, so that the predicate needs no collective.

    Returns:
        x, bit for bit, with the identity as its gradient.
    """
    if jax.default_backend() != "cpu":
        return x
    return jax.lax.cond(key >= 0, lambda v: v, _same_bits, x)


@jax.custom_jvp
def _same_bits(v: jax.Array) -> jax.Array:
    """The identity, in a form XLA does not simplify away (a bitcast to an
    integer and back; its tangent is the identity, not a bitcast's zero)."""
    bits = jnp.dtype(f"int{8 * v.dtype.itemsize}")
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(v, bits), v.dtype)


@_same_bits.defjvp
def _same_bits_jvp(primals, tangents):
    return _same_bits(primals[0]), tangents[0]


def _a_weight(conv: nn.Conv) -> jax.Array:
    """One weight of a called conv: `stored_for_backward`'s predicate input."""
    return conv.variables["params"]["kernel"].reshape(-1)[0]


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON, name=name)


def shortcut_option_a(x: jax.Array, features: int, stride: int) -> jax.Array:
    """Parameter-free shortcut: subsample ::stride and zero-pad channels.

    Pads (features - C) zero channels split evenly before and after the
    existing ones, as akamaster's `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0,
    planes//4, planes//4))` does for a doubling of channels.

    Args:
        x: activations, (B, H, W, C).
        features: output channels, >= C.
        stride: spatial subsampling factor.

    Returns:
        (B, ceil(H/stride), ceil(W/stride), features); x itself if nothing changes.
    """
    in_features = x.shape[-1]
    if stride == 1 and features == in_features:
        return x
    if features < in_features:
        raise ValueError(
            f"option-A shortcut cannot reduce channels: {in_features} -> {features}")
    x = x[:, ::stride, ::stride, :]
    before = (features - in_features) // 2
    after = features - in_features - before
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (before, after)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the option-A shortcut, then ReLU.

    Attributes:
        features: output channels.
        stride: stride of the first conv (and of the shortcut's subsampling).
        inner_features: channels between conv1 and conv2 (default `features`);
            fewer after structured pruning (`kpjax.pruning.structured.shrink`): they
            are the block's own, not added to the shortcut.
    """

    features: int
    stride: int = 1
    inner_features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv1 = _conv3x3(self.inner_features or self.features, self.stride, "conv1")
        y = nn.relu(_batch_norm(train, "bn1")(conv1(x)))
        if train:
            y = stored_for_backward(y, _a_weight(conv1))
        y = _conv3x3(self.features, 1, "conv2")(y)
        y = _batch_norm(train, "bn2")(y)
        out = nn.relu(y + shortcut_option_a(x, self.features, self.stride))
        return stored_for_backward(out, _a_weight(conv1)) if train else out


class ResNet(nn.Module):
    """CIFAR ResNet with option-A shortcuts.

    Submodule names mirror akamaster's PyTorch state dict: conv1, bn1,
    layer{s}_{b} (stage s = 1..3, block b = 0..n-1, each with conv1, bn1,
    conv2, bn2) and linear. Conv and dense kernels use Kaiming-normal init
    (fan_in, gain sqrt 2), the dense bias PyTorch's default, BatchNorm scale 1
    and bias 0.

    Attributes:
        num_blocks: basic blocks per stage (3, 5, 7, 9 for ResNet-20/32/44/56).
        widths: channels of the stem/stage 1 and of each stage.
        num_classes: outputs of the classifier.
        inner_widths: each block's inner channels (stage by stage, block by
            block), or None for the stage widths.
    """

    num_blocks: int
    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    inner_widths: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits for a batch.

        Args:
            x: images, (B, H, W, 3) float32, already normalized (H = W = 32 for CIFAR).
            train: batch statistics in BatchNorm (and update the running
                averages in the mutable 'batch_stats' collection) when True;
                running averages when False.

        Returns:
            Logits, (B, num_classes).
        """
        stem = _conv3x3(self.widths[0], 1, "conv1")
        x = nn.relu(_batch_norm(train, "bn1")(stem(x)))
        if train:
            x = stored_for_backward(x, _a_weight(stem))
        for stage, features in enumerate(self.widths):
            for block in range(self.num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                inner = (None if self.inner_widths is None
                         else self.inner_widths[stage * self.num_blocks + block])
                x = BasicBlock(features, stride, inner, name=f"layer{stage + 1}_{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(
            self.num_classes, kernel_init=initializers.kaiming_normal,
            bias_init=initializers.torch_default_bias(x.shape[-1]),
            name="linear")(x)
