from django.apps import AppConfig


class EngineConfig(AppConfig):
    name = "superimap.engine"
    verbose_name = "IMAP engine"
