"""sphinxx: scaling sweeps of the SPHINX-X multimodal LLM family on Kubernetes."""

__version__ = "0.1.0"
