"""The stages, one module per command, and the runner they share. The top layer: nothing in
rlaif imports a stage except the CLI."""
