from django.apps import AppConfig


class TracersConfig(AppConfig):
    name = "superimap.tracers"
    verbose_name = "Tracers"
