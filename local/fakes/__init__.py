"""Strict fakes of the providers' own APIs (Anthropic, Gemini, Bedrock) for tests and benchmarks.

Each fake is written from the provider's public API reference, is as strict as the real
service (unknown fields, roles, auth) and is proven faithful by a test that drives it with
that provider's official SDK. They run on loopback through ``fakes.server.ThreadedServer``.
"""
