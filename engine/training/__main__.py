"""``python -m engine.training spec.json``: train with a progress bar, print the final numbers."""

from .loop import main

if __name__ == "__main__":
    raise SystemExit(main())
