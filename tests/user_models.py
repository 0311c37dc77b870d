"""Flax models outside kpjax's registry, for the tests of --model=module.path:Attr.

`TinyMLP` has no `train` argument (the experiments wrap it) and takes
`num_classes`; `tiny_mlp` is a factory of no arguments; `NOT_A_MODULE` is
what a typo in the attribute could name.
"""

from flax import linen as nn


class TinyMLP(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(self.num_classes)(x)


def tiny_mlp() -> nn.Module:
    return TinyMLP(num_classes=10)


NOT_A_MODULE = 3
