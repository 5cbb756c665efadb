"""`pretrainctl`: the client of the pretrain-orchestrator API (HTTP only), and the commands
that start the service's processes (`pretrainctl.server`, the one module that imports it)."""
