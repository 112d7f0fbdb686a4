"""The gate: pure checks on a typed request (paths, patch, manifest, scope, policy)."""
