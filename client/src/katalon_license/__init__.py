"""katalon-license: takes, keeps and releases a Katalon license from a self-hosted Katalon Admin
portal around a test run (the engine API in contract/engine-api.md)."""

__version__ = "1.0.0"
