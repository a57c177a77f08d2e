"""Weights: the registry of published files (plain data), the safetensors format, the Hub client, export."""
