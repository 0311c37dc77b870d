"""kpjax: Koopman-operator pruning of neural networks in JAX.

Pure functions on parameter pytrees: a Koopman/DMD fit of the weight
trajectory (`kpjax.koopman`), pruning scores and masks (`kpjax.pruning`),
models, data, masked training and checkpoints.
"""

__version__ = "0.1.0"
