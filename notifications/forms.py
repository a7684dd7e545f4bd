from django import forms

from . import destinations
from .event_types import EventType

ALL, CHOSEN = "all", "chosen"


class AlertPreferenceForm(forms.Form):
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Mail me when",
    )
    daily_digest = forms.BooleanField(
        required=False,
        label="One daily digest instead of a mail per event",
        help_text="Sent shortly after midnight (UTC) with the previous day's events, when there were any.",
    )


class EndpointForm(forms.Form):
    url = forms.CharField(
        max_length=2000,
        label="URL",
        help_text="Where events are POSTed, e.g. https://hooks.example.com/katalon.",
        widget=forms.URLInput(attrs={"placeholder": "https://", "autocomplete": "off"}),
    )
    description = forms.CharField(max_length=200, required=False, help_text="What receives them, e.g. “Slack #qa”.")
    receive = forms.ChoiceField(
        choices=[(ALL, "Every event, those added later included"), (CHOSEN, "Only the events chosen below")],
        initial=ALL,
        widget=forms.RadioSelect,
        label="Events",
    )
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices, required=False, widget=forms.CheckboxSelectMultiple, label="Chosen events"
    )

    @classmethod
    def for_endpoint(cls, endpoint, **kwargs):
        return cls(
            initial={
                "url": endpoint.url,
                "description": endpoint.description,
                "receive": CHOSEN if endpoint.event_types else ALL,
                "event_types": endpoint.event_types,
            },
            **kwargs,
        )

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        try:
            destinations.checked_addresses(url)
        except (destinations.RefusedDestination, destinations.UnreachableDestination) as error:
            raise forms.ValidationError(str(error), code="refused_destination") from error
        return url

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("receive") == CHOSEN and not cleaned.get("event_types"):
            self.add_error("event_types", forms.ValidationError("Choose at least one event.", code="required"))
        return cleaned

    @property
    def chosen_event_types(self):
        return self.cleaned_data["event_types"] if self.cleaned_data["receive"] == CHOSEN else []
