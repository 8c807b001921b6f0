from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "superimap.delivery"
    verbose_name = "Webhook deliveries"
