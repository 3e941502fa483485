"""Rich consoles shared by the CLI modules: stdout for data, stderr for messages."""

from __future__ import annotations

import shutil

from rich.console import Console

# Wide enough for UUIDs when stdout is not a terminal (rich would assume 80 columns).
_WIDTH = shutil.get_terminal_size((160, 24)).columns

console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
