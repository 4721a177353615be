"""Streaming wing: the Redis protocol, the stream worker, its metrics and the embedded redis-server."""
