"""Pure functions from a resource to the child manifests it needs (golden-YAML tested)."""
