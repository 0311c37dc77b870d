"""A VALID, stride-1 convolution whose input gradient is a matmul.

XLA:CPU computes the input gradient of a 5×5 VALID convolution as a "full"
convolution of the zero-padded output gradient with the flipped kernel, in
Eigen's spatial convolution, which handles that shape poorly: for MnistNet's
conv2 (12×12×20 → 8×8×50, batch 128) it takes 13.6 ms against the forward's
3.5 ms. Written instead as the transpose of im2col, ∂L/∂x = col2im(g·Wᵀ) —
one (B·H_out·W_out, C_out)×(C_out, k_h·k_w·C_in) matmul, then the k_h·k_w
shifted slices summed back — it takes 6.7 ms (BUILD_NOTES, "MnistNet's
step"). The forward pass and the weight gradient stay XLA's.

The rule is a `jax.custom_jvp`, not a custom VJP, so that forward-mode
derivatives (GraSP's and GN's Hessian-vector products, `jax.jvp` of
`jax.grad`) keep working: the tangent in x goes through im2col, whose
transpose JAX derives as the matmul and the shifted sums above.

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


class ValidConv(nn.Conv):
    """`nn.Conv` (VALID, stride 1, no dilation or groups) through `valid_conv`.

    The same parameters ('kernel' (k_h, k_w, C_in, C_out), 'bias') and the
    same forward values as ``nn.Conv(features, kernel_size, padding="VALID")``;
    only the input gradient's formulation (and so its float32 rounding)
    differs.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if (self.padding != "VALID" or self.strides not in (None, 1, (1, 1))
                or self.input_dilation not in (1, (1, 1)) or self.kernel_dilation not in (1, (1, 1))
                or self.feature_group_count != 1 or len(self.kernel_size) != 2):
            raise ValueError("ValidConv is a 2-D VALID convolution with stride 1 and no "
                             "dilation or groups; use nn.Conv otherwise")
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, inputs.shape[-1], self.features), self.param_dtype)
        y = valid_conv(inputs, kernel)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return y
