"""The experiment binaries (`python -m experiments.prune`, ...) and what they
share. Run from the repository root; not installed with kpjax.

May import: experiments.
"""
