"""Test fixtures: Dovecot, PostgreSQL, the chaos IMAP server and a webhook receiver."""
