"""kotune: reproducible QLoRA fine-tuning of Llama-family models on Korean instruction and chat data."""

__version__ = "0.1.0"
