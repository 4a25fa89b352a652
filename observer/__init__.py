"""LLM Observer: observability and alerting for self-hosted LLM inference."""

__version__ = "0.1.0"
