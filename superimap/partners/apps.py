from django.apps import AppConfig


class PartnersConfig(AppConfig):
    name = "superimap.partners"
    verbose_name = "Partners"
