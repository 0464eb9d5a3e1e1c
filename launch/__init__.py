"""Starting jobs as processes: local ranks now, clusters later. Never imports the training loop."""
