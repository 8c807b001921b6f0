from django.apps import AppConfig


class MailboxesConfig(AppConfig):
    name = "superimap.mailboxes"
    verbose_name = "Mailboxes"
