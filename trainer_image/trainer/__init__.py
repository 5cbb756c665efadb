"""The trainer that runs inside each PyTorchJob pod; imports nothing from `service`."""
