"""The top layer: the `neuronova` command and the local stack, calling flows and the webapp."""
