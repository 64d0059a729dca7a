"""TruckLLM: a self-hosted LLM gateway in one process."""

__version__ = "0.1.0"
