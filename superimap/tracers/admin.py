from django.contrib import admin
from django.db.models import DurationField, ExpressionWrapper, F

from superimap.tracers.models import TracerLog


class DetectedFilter(admin.SimpleListFilter):
    title = "detected"
    parameter_name = "detected"

    def lookups(self, request, model_admin):
        return [("yes", "Detected"), ("no", "Not detected")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(detected_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(detected_at__isnull=True)
        return queryset


@admin.register(TracerLog)
class TracerLogAdmin(admin.ModelAdmin):
    list_display = ["tracer_uid", "user", "sent_at", "detected_at", "latency"]
    list_filter = [DetectedFilter, "sent_at"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    search_fields = ["tracer_uid", "user__tag", "user__email"]
    date_hierarchy = "sent_at"
    show_full_result_count = False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _latency=ExpressionWrapper(
                    F("detected_at") - F("sent_at"), output_field=DurationField()
                )
            )
        )

    @admin.display(description="latency", ordering="_latency")
    def latency(self, obj: TracerLog) -> str:
        seconds = obj.latency_seconds
        return "not detected" if seconds is None else f"{seconds:.2f} s"

    def has_add_permission(self, request):
        return False
