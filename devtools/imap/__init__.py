"""The server side of IMAP for the test servers: sans-IO command framing and responses
(server) and in-memory mailboxes (mailstore). The client side is superimap.imap."""
