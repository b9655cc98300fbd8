"""The live viewer: a page served by the HTTP API at ``/`` showing runs as they are acquired."""
