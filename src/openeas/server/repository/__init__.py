"""Model repositories: the on-disk layout and ``config.pbtxt`` model configurations."""
