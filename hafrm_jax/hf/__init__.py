"""Hugging Face interop: configs, streamed safetensors weights, tokenizers, and export."""
