"""Score tables, keep lists and manifests, all written atomically."""
