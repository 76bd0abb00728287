"""ember: a text embedding, rerank and classification server that is warm before it is ready."""

__version__ = "0.1.0"
