"""Data sources, class-disjoint splits, samplers and loaders."""
