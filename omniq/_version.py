"""The package version (one place; omniq.__version__ re-exports it)."""

VERSION = "0.1.0"
