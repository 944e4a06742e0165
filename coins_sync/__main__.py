"""``python -m coins_sync`` runs the same command line as ``coins-sync``."""

from __future__ import annotations

from coins_sync.cli import main

if __name__ == "__main__":
    main()
