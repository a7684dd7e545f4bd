from django.shortcuts import render
from django.utils.cache import patch_vary_headers


def render_filtered(request, template_name, fragment, context, *, status=200):
    """A filtered list page: the whole page, or for htmx only `fragment` (figures and rows).

    htmx swaps only 2xx answers, so an invalid filter's fragment is sent as 200 with its errors
    inside; the whole page keeps the 400. The same URL answers either way depending on HX-Request,
    so caches are told to keep them apart."""
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, f"{template_name}#{fragment}", context)
    else:
        response = render(request, template_name, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response
