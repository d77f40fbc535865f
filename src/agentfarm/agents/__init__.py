"""Agent adapters: pure argv/env builders and output parsers. No I/O here."""
