"""The replay engine: runs a workflow function against its history."""
