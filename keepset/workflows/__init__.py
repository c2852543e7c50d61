"""End-to-end jobs built from the public API (the demo); the CLI calls these."""
