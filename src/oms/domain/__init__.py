"""The pure domain model: no I/O, no asyncio, no protobuf."""
