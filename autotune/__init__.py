"""autotune: what should we do to make a model fast on a target (imports costmodel, never the reverse)."""
