from django.contrib import admin

from superimap.engine.models import EngineNode


@admin.register(EngineNode)
class EngineNodeAdmin(admin.ModelAdmin):
    list_display = ["node_id", "host", "pid", "version", "mailboxes_held", "capacity", "last_seen"]
    readonly_fields = [f.name for f in EngineNode._meta.fields]

    def has_add_permission(self, request):
        return False
