"""``python -m gpuslice.cli`` runs the CLI."""

from gpuslice.cli import main

main()
