"""Domain: the nouns every layer shares (pydantic models, backend configs), the launch spec
(standard library only, for the monitor) and the error hierarchy. No I/O here."""
