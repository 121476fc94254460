"""Dock widgets: Denoise, Align, Cluster, Simulate, Compare."""
