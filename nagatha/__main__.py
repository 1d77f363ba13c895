"""``python -m nagatha`` runs the CLI."""

from nagatha.cli import main

main()
