from django.contrib import admin

from superimap.tracers.models import TracerLog


@admin.register(TracerLog)
class TracerLogAdmin(admin.ModelAdmin):
    list_display = ["tracer_uid", "user", "sent_at", "detected_at", "latency_seconds"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False
