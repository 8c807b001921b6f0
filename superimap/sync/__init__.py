"""The mailbox rules without I/O: no asyncio, no Django, no sockets (engine/ runs them)."""
