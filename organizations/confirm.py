"""Asking before an action that cannot be taken back: one page, one fragment, one helper.

A dangerous button is a GET form to its action's URL (see templates/confirm_button.html). The GET
answers with what will happen and a POST form that does it: a page of its own with JavaScript off,
or, for htmx, a fragment the browser shows in the page's <dialog>. The POST is the action itself,
so the confirmation costs the view one `if request.method == "GET"` branch."""

from dataclasses import dataclass, field

from django.shortcuts import render
from django.utils.cache import patch_vary_headers

CONFIRM_TEMPLATE = "confirm.html"
# The <dialog>'s content in base.html, where htmx puts a confirmation fragment.
CONFIRM_SLOT = "#confirm-slot"


@dataclass
class Confirmation:
    title: str
    consequence: str
    button: str
    action_url: str
    cancel_url: str
    # Where the confirmed action's htmx answer goes: the section the action re-renders.
    hx_target: str
    hx_swap: str = "outerHTML"
    hidden: list[tuple[str, str]] = field(default_factory=list)
    # Further lines spelling out the consequence (a list of names, the figures behind a cost).
    details: list[str] = field(default_factory=list)
    danger: bool = True


def ask_to_confirm(request, confirmation, *, status=200):
    """The confirmation for `confirmation`: a whole page without htmx, else the dialog's fragment,
    retargeted into the dialog whatever the asking element's own target was (a form that also shows
    its errors in place asks here only once it is valid)."""
    context = {"confirmation": confirmation}
    if request.htmx:
        response = render(request, f"{CONFIRM_TEMPLATE}#dialog", context, status=status)
        response["HX-Retarget"] = CONFIRM_SLOT
        response["HX-Reswap"] = "innerHTML"
    else:
        response = render(request, CONFIRM_TEMPLATE, context, status=status)
    # The same address answers with a page or a fragment: caches keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response
