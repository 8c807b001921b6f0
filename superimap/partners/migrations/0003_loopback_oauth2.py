from django.db import migrations

# OAuth 2.0 against local servers (superimap.testing.oauth_server + the chaos IMAP server).
# Host and OAuth URLs are given per connection (Connection.imap_host, .oauth_base_url).
PROVIDER = {
    "code": "LOOPBACK_OAUTH2",
    "title": "Loopback test server (OAuth 2.0; only with ALLOW_LOOPBACK_IMAP)",
    "auth_kind": "oauth2",
    "imap_host": "",
    "imap_port": 1143,
    "imap_tls": "none",
    "oauth_scopes": "imap openid email",
    "folder": "INBOX",
    "loopback_only": True,
}


def seed(apps, schema_editor):
    ImapProvider = apps.get_model("partners", "ImapProvider")
    ImapProvider.objects.update_or_create(code=PROVIDER["code"], defaults=PROVIDER)


def unseed(apps, schema_editor):
    ImapProvider = apps.get_model("partners", "ImapProvider")
    ImapProvider.objects.filter(code=PROVIDER["code"], connections__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("partners", "0002_seed_providers")]
    operations = [migrations.RunPython(seed, unseed)]
