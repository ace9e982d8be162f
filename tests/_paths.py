"""Where the project's shared data lives: `shared/` beside the checkout (as on developer machines and
in CI), or wherever LDEQ_SHARED points."""
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LDEQ_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
REFERENCE = SHARED / "reference"
