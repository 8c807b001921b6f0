"""SuperIMAP: watch IMAP inboxes with IDLE and POST each new email to a signed webhook."""

__version__ = "0.2.0"
