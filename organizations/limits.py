"""Every text field states its limit, and a value past it is refused with a message, never cut.

Django renders a CharField's max_length as the HTML `maxlength` attribute, and browsers enforce that
by cutting what is typed or pasted, without a word: a 130-character machine id pasted into the
offline-license form became a license for a 128-character id, a different machine. So the limit is
rendered as `data-maxlength` instead: static/js/app.js counts beside the field and blocks the
submit with a message, and without JavaScript the form's own validation refuses it ("Ensure this value has at most
128 characters (it has 130)."). The server's check (MaxLengthValidator) is unchanged; only the cutting goes."""

from django import forms

# An error that quotes what was typed shows at most this much of it: a 10,000-character value must
# not be repeated in full (it made the members page 98,000 px wide).
QUOTED_VALUE_LIMIT = 60


def shorten(value, limit=QUOTED_VALUE_LIMIT):
    """`value` to quote in a message: whole when short, else its start and an ellipsis."""
    value = str(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


_django_widget_attrs = forms.CharField.widget_attrs


def _widget_attrs_without_cutting(field, widget):
    attrs = _django_widget_attrs(field, widget)
    if "maxlength" in attrs:
        attrs["data-maxlength"] = attrs.pop("maxlength")
    return attrs


def install():
    """Called once from OrganizationsConfig.ready(), so every form of every app (and Django's own
    forms) gets it: a field cannot forget it."""
    forms.CharField.widget_attrs = _widget_attrs_without_cutting
