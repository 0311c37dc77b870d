"""Files in and out: orbax checkpoints of the training state (`checkpoints`),
the on-disk trajectory format for out-of-core fits (`trajectory_store`), and
PyTorch checkpoints read without PyTorch (`torch_pickle`, `torch_file`,
`torch_import`). Import the submodule you need; none of them imports
training or a model registry.

May import: kpjax.io.
"""
