"""Convolutions reformulated where XLA:CPU's own kernels are slow.

Both keep nn.Conv's parameters (names, shapes, initial values) and so its
checkpoints; only how the convolution and its derivatives are computed
(and so their float32 rounding) differs. Measured in BUILD_NOTES ("MnistNet's
step", "VGG-16's step").

`ValidConv` (MnistNet): a VALID, stride-1 convolution whose input gradient
is a matmul. XLA:CPU computes the input gradient of a 5×5 VALID convolution
as a "full" convolution of the zero-padded output gradient with the flipped
kernel, in Eigen's spatial convolution, which handles that shape poorly: for
MnistNet's conv2 (12×12×20 → 8×8×50, batch 128) it takes 13.6 ms against
the forward's 3.5 ms. Written instead as the transpose of im2col, ∂L/∂x =
col2im(g·Wᵀ) — one (B·H_out·W_out, C_out)×(C_out, k_h·k_w·C_in) matmul, then
the k_h·k_w shifted slices summed back — it takes 6.7 ms. The forward pass
and the weight gradient stay XLA's. The rule is a `jax.custom_jvp`, not a
custom VJP, so that forward-mode derivatives (GraSP's and GN's
Hessian-vector products, `jax.jvp` of `jax.grad`) keep working: the tangent
in x goes through im2col, whose transpose JAX derives as the matmul and the
shifted sums above.

`Im2colConv` (VGG-16's last three convolutions): the whole convolution as
im2col and one matmul. On a map smaller than the kernel (VGG-16's 2×2 maps,
3×3 kernels, 512 channels) Eigen's convolution runs at 3 GFLOP/s, against
150–250 elsewhere: 773 ms forward and 846 ms input gradient per layer at
batch 128, against 16 and 15 ms as im2col (weight gradient 12 vs 14 ms). On
4×4 maps and larger XLA's own is faster, so models use it only on maps
smaller than the kernel (`smaller_than_kernel`).

May import: flax, jax.
"""

from __future__ import annotations

from flax import linen as nn
import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col: (B, H, W, C) → (B, H−kh+1, W−kw+1, kh·kw, C), the window at each output."""
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.stack([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=3)


@jax.custom_jvp
def valid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """y = x ⋆ W, VALID, stride 1: (B, H, W, C_in) ⋆ (k_h, k_w, C_in, C_out)."""
    return _conv(x, kernel)


@valid_conv.defjvp
def _valid_conv_jvp(primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    kh, kw, c_in, c_out = kernel.shape
    # ẏ = x ⋆ Ẇ + im2col(ẋ)·W: linear in (ẋ, Ẇ); reverse mode transposes the
    # second term into col2im(g·Wᵀ).
    tangent = _conv(x, dkernel) + jnp.einsum(
        "bhwkc,kco->bhwo", _patches(dx, kh, kw), kernel.reshape(kh * kw, c_in, c_out))
    return _conv(x, kernel), tangent


def _check_plain(conv: nn.Conv, what: str) -> None:
    if (conv.strides not in (None, 1, (1, 1)) or conv.input_dilation not in (1, (1, 1))
            or conv.kernel_dilation not in (1, (1, 1)) or conv.feature_group_count != 1
            or len(conv.kernel_size) != 2):
        raise ValueError(f"{what} is a 2-D convolution with stride 1 and no dilation or "
                         "groups; use nn.Conv otherwise")


class _Reformulated(nn.Conv):
    """An nn.Conv computed by `_convolve(x, kernel)`: nn.Conv's 'kernel'
    (k_h, k_w, C_in, C_out) and 'bias' parameters, created as it does."""

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        raise NotImplementedError

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        _check_plain(self, type(self).__name__)
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
        y = self._convolve(inputs, kernel)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return y


class ValidConv(_Reformulated):
    """`nn.Conv` (VALID, stride 1, no dilation or groups) through `valid_conv`.

    The same parameters ('kernel' (k_h, k_w, C_in, C_out), 'bias') and the
    same forward values as ``nn.Conv(features, kernel_size, padding="VALID")``;
    only the input gradient's formulation (and so its float32 rounding)
    differs.
    """

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        if self.padding != "VALID":
            raise ValueError("ValidConv is a VALID convolution; use nn.Conv otherwise")
        return valid_conv(x, kernel)


def im2col_conv(x: jax.Array, kernel: jax.Array,
                padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """y = x ⋆ W, stride 1, explicit zero padding ((top, bottom), (left, right)),
    as im2col(pad(x))·W; its derivatives are JAX's of those operations."""
    kh, kw, c_in, c_out = kernel.shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return jnp.einsum("bhwkc,kco->bhwo", _patches(x, kh, kw), kernel.reshape(kh * kw, c_in, c_out))


def smaller_than_kernel(x: jax.Array, kernel_size: tuple[int, int]) -> bool:
    """Whether the (B, H, W, C) map is smaller than the kernel in H or W: where
    `Im2colConv` beats XLA:CPU's convolution."""
    return x.shape[1] < kernel_size[0] or x.shape[2] < kernel_size[1]


class Im2colConv(_Reformulated):
    """`nn.Conv` (stride 1, explicit padding pairs, no dilation or groups) as
    im2col and one matmul (`im2col_conv`): nn.Conv's parameters, its values
    to float32 rounding."""

    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        padding = self.padding
        if not (isinstance(padding, (tuple, list)) and len(padding) == 2
                and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)):
            raise ValueError("Im2colConv takes explicit padding pairs ((top, bottom), "
                             f"(left, right)), got {padding!r}")
        return im2col_conv(x, kernel, tuple(tuple(p) for p in padding))
