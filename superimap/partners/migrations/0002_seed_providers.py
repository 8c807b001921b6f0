from django.db import migrations

PROVIDERS = [
    {
        "code": "GMAIL_OAUTH2",
        "title": "Gmail (OAuth 2.0)",
        "auth_kind": "oauth2",
        "imap_host": "imap.gmail.com",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_host": "smtp.gmail.com",
        "smtp_port": 587,
        "oauth_authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "oauth_token_url": "https://oauth2.googleapis.com/token",
        "oauth_revoke_url": "https://oauth2.googleapis.com/revoke",
        "oauth_userinfo_url": "https://openidconnect.googleapis.com/v1/userinfo",
        "oauth_scopes": "https://mail.google.com/ openid email",
        "folder": "INBOX",
    },
    {
        "code": "OUTLOOK_OAUTH2",
        "title": "Microsoft 365 / Outlook.com (OAuth 2.0)",
        "auth_kind": "oauth2",
        "imap_host": "outlook.office365.com",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_host": "smtp.office365.com",
        "smtp_port": 587,
        "oauth_authorize_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "oauth_token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "oauth_userinfo_url": "https://graph.microsoft.com/v1.0/me",
        "oauth_scopes": (
            "https://outlook.office.com/IMAP.AccessAsUser.All "
            "https://outlook.office.com/SMTP.Send offline_access openid email"
        ),
        "folder": "INBOX",
    },
    {
        "code": "PLAIN",
        "title": "Any IMAP server (password)",
        "auth_kind": "password",
        "imap_host": "",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_port": 587,
    },
    {
        "code": "YAHOO_PLAIN",
        "title": "Yahoo Mail (app password)",
        "auth_kind": "password",
        "imap_host": "imap.mail.yahoo.com",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_host": "smtp.mail.yahoo.com",
        "smtp_port": 587,
    },
    {
        "code": "ICLOUD_PLAIN",
        "title": "iCloud Mail (app-specific password)",
        "auth_kind": "password",
        "imap_host": "imap.mail.me.com",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_host": "smtp.mail.me.com",
        "smtp_port": 587,
    },
    {
        "code": "FASTMAIL_PLAIN",
        "title": "Fastmail (app password)",
        "auth_kind": "password",
        "imap_host": "imap.fastmail.com",
        "imap_port": 993,
        "imap_tls": "implicit",
        "smtp_host": "smtp.fastmail.com",
        "smtp_port": 587,
    },
    {
        "code": "LOOPBACK_PLAIN",
        "title": "Loopback test server (password; only with ALLOW_LOOPBACK_IMAP)",
        "auth_kind": "password",
        "imap_host": "",
        "imap_port": 1143,
        "imap_tls": "none",
        "loopback_only": True,
    },
]


def seed(apps, schema_editor):
    ImapProvider = apps.get_model("partners", "ImapProvider")
    for fields in PROVIDERS:
        ImapProvider.objects.update_or_create(code=fields["code"], defaults=fields)


def unseed(apps, schema_editor):
    ImapProvider = apps.get_model("partners", "ImapProvider")
    ImapProvider.objects.filter(code__in=[p["code"] for p in PROVIDERS], connections__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("partners", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
