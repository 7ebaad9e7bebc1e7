"""Python SDK for sdpo-service. It speaks HTTP only and imports nothing of the server."""
