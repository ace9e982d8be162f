"""Where the tests' data lives: ``tests/fixtures/`` inside the repository (see its README.md for
how each file was made). Tests never read anything outside the checkout, so a fresh clone anywhere
runs the whole suite."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
