"""Every text field states its limit, and a value past it is refused with a message, never cut.

Django renders a CharField's max_length as the HTML `maxlength` attribute, and browsers enforce that
by cutting what is typed or pasted, without a word: a 130-character machine id pasted into the
offline-license form became a license for a 128-character id, a different machine. So the form
renderer below renders the limit as `data-maxlength` instead: static/js/app.js counts beside the
field and blocks the submit with a message, and without JavaScript the form's own validation
refuses it ("Ensure this value has at most 128 characters (it has 130)."). The server's check
(MaxLengthValidator) is unchanged; only the cutting goes."""

from django.forms.renderers import DjangoTemplates

# An error that quotes what was typed shows at most this much of it: a 10,000-character value must
# not be repeated in full (it made the members page 98,000 px wide).
QUOTED_VALUE_LIMIT = 60


def shorten(value, limit=QUOTED_VALUE_LIMIT):
    """`value` to quote in a message: whole when short, else its start and an ellipsis."""
    value = str(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class LimitStatingRenderer(DjangoTemplates):
    """Django's renderer (settings.FORM_RENDERER), with `maxlength` rendered as `data-maxlength`:
    for every form of every app, and Django's own, so no field can forget it."""

    def render(self, template_name, context, request=None):
        widget = context.get("widget")
        if isinstance(widget, dict) and "maxlength" in widget.get("attrs", {}):
            attrs = dict(widget["attrs"])
            attrs["data-maxlength"] = attrs.pop("maxlength")
            context = {**context, "widget": {**widget, "attrs": attrs}}
        return super().render(template_name, context, request=request)
