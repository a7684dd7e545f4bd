from django import forms
from django.utils import timezone

from sessions_app.models import EndReason

from .usage import DEFAULT_RANGE, LIVE, MAX_CUSTOM_DAYS, RANGE_CHOICES, custom_period, preset_period

REASON_CHOICES = [("", "Any"), (LIVE, "Live"), *EndReason.choices]


class UsageFilterForm(forms.Form):
    """The usage page's filter, read from the query string. Empty fields mean "all"."""

    product = forms.ChoiceField(label="Product")
    range = forms.ChoiceField(label="Range", choices=RANGE_CHOICES)
    start = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="With custom dates."
    )
    end = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Inclusive."
    )
    user = forms.CharField(label="User", max_length=254, required=False, help_text="Name or email contains.")
    machine = forms.CharField(label="Machine", max_length=255, required=False, help_text="Machine id or host contains.")
    reason = forms.ChoiceField(label="End reason", choices=REASON_CHOICES, required=False)

    # Set by clean() when custom dates lack a day: the filter is not wrong, only unfinished.
    awaiting_dates = ""

    def __init__(self, data, *, products, now=None):
        data = data.copy()
        # The first visit carries no query string: show the first product over the default range,
        # and say so in the form, or the browser would show the first option as chosen.
        if not data.get("product") and products:
            data["product"] = products[0][0]
        if not data.get("range"):
            data["range"] = DEFAULT_RANGE
        super().__init__(data)
        self.now = now or timezone.now()
        self.fields["product"].choices = products

    def clean(self):
        cleaned = super().clean()
        chosen = cleaned.get("range")
        if chosen is None:
            return cleaned
        if chosen != "custom":
            cleaned["period"] = preset_period(chosen, self.now)
            return cleaned
        start, end = cleaned.get("start"), cleaned.get("end")
        if "start" in self.errors or "end" in self.errors:
            return cleaned
        if start is None or end is None:
            # Not an error: choosing "Custom dates" submits the filter (htmx, on change) before
            # anyone could enter a day. The page asks for the missing day instead of scolding.
            self.awaiting_dates = (
                "Choose the first and the last day."
                if start is None and end is None
                else ("Choose the first day too." if start is None else "Choose the last day too.")
            )
            return cleaned
        if end < start:
            self.add_error("end", "The last day must not be before the first day.")
        elif start > self.now.date():
            self.add_error("start", "The first day must not be in the future.")
        elif (end - start).days + 1 > MAX_CUSTOM_DAYS:
            self.add_error("end", f"Choose at most {MAX_CUSTOM_DAYS} days.")
        else:
            cleaned["period"] = custom_period(start, end, self.now)
        return cleaned
