"""Edges to other tools: mergekit configs in and out, and the Hugging Face hub."""
