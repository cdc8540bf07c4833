"""curvscope probe: ViViT curvature snapshots of a PyTorch model (torch side)."""
