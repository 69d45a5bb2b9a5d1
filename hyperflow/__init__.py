"""HyperFlow: gradient-free emulation of few-shot bias fine-tuning."""

__version__ = "0.1.0"
