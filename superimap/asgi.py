from django.core.asgi import get_asgi_application

from superimap.platform import prepare

# Run directly by uvicorn (`superimap.asgi:application`), this is the entry point: the files
# first (secrets, VAR_DIR, the SQLite file 0600; platform/prepare.py), then Django.
prepare.prepare()
django_application = get_asgi_application()

from superimap.frontdoor import FrontDoor  # noqa: E402 - needs the settings configured above

# Body limits and API key checks happen here, before Django reads a body (frontdoor.py).
application = FrontDoor(django_application)
