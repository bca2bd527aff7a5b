"""The `sonoedge` verbs: `main` parses, one module per verb that needs more than a few lines."""
