"""The application: configuration, cameras, the training loop, checkpoints, video and mesh export."""
