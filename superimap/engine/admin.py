from django.contrib import admin
from django.utils import timezone

from superimap import healthz
from superimap.engine.models import EngineNode


@admin.register(EngineNode)
class EngineNodeAdmin(admin.ModelAdmin):
    list_display = [
        "node_id",
        "host",
        "pid",
        "version",
        "mailboxes_held",
        "capacity",
        "last_seen",
        "heartbeat",
    ]
    readonly_fields = [f.name for f in EngineNode._meta.fields]

    @admin.display(description="Heartbeat")
    def heartbeat(self, node: EngineNode) -> str:
        age = timezone.now() - node.last_seen
        state = "alive" if age <= healthz.engine_dead_after() else "DEAD"
        return f"{state}, {age.total_seconds():.0f} s ago"

    def has_add_permission(self, request):
        return False
