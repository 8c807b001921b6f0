"""What the operator console's pages share (the admin's ModelAdmins)."""

# The console's stylesheet (mailboxes/static/superimap/console.css): lists fit 1,400 px.
CONSOLE_CSS = {"all": ["superimap/console.css"]}
