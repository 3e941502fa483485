"""``python -m gpuslice`` runs the CLI."""

from gpuslice.cli import main

main()
