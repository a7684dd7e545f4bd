from datetime import UTC, date, datetime, time, timedelta

from django import forms

from .audit import Action


class AuditFilterForm(forms.Form):
    """The audit log's filter, read from the query string. Empty fields mean "all"."""

    actor = forms.CharField(label="Who", max_length=254, required=False, help_text="Email contains.")
    action = forms.ChoiceField(label="What", choices=[("", "Anything"), *Action.choices()], required=False)
    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Inclusive."
    )

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end < start:
            self.add_error("end", "The last day must not be before the first day.")
        return cleaned

    def filter(self, events):
        """Narrow `events` to what the valid form asks for."""
        filters = self.cleaned_data
        if filters["actor"]:
            events = events.filter(actor_label__icontains=filters["actor"])
        if filters["action"]:
            events = events.filter(action=filters["action"])
        # Whole UTC days, as bounds on created_at itself so the (organization, -created_at) index serves them.
        if filters["start"]:
            events = events.filter(created_at__gte=datetime.combine(filters["start"], time.min, tzinfo=UTC))
        # The last representable day has no next day to bound it by; nothing is recorded after it anyway.
        if filters["end"] and filters["end"] < date.max:
            events = events.filter(
                created_at__lt=datetime.combine(filters["end"], time.min, tzinfo=UTC) + timedelta(days=1)
            )
        return events
