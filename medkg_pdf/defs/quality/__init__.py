"""A document's parse scored against its text layer: the asset, the blocking gates, and re-scoring."""
