"""A vLLM-like engine: OpenAI routes, continuous batching over a paged KV cache, vLLM metrics and spans."""
