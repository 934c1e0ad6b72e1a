"""``python -m store info PATH [--json]``: what a feature store holds."""
from __future__ import annotations


from store.cli import main

if __name__ == "__main__":
    main()
