import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "superimap.settings")
django_application = get_asgi_application()

from superimap.frontdoor import FrontDoor  # noqa: E402 - needs the settings configured above

# Body limits and API key checks happen here, before Django reads a body (frontdoor.py).
application = FrontDoor(django_application)
