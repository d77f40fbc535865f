"""Domain models: pure pydantic types shared by every layer. No I/O here."""
