"""Date formats for the dashboard (FORMAT_MODULE_PATH): times to the second."""
