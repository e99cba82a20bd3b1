"""vppo: the reproduction harness for VPPO (visually-perceptive policy optimisation) on Qwen2.5-VL."""

__version__ = "0.1.0"
