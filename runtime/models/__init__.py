"""Llama-family models and their weight loaders (GGUF, Hugging Face safetensors, dummy)."""
