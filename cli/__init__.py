"""The `durable` command line, installed as the `durable_cli` package."""
