"""Paginators for lists too long to count on every page view."""

from django.core.paginator import Paginator


class CountedPaginator(Paginator):
    """A paginator given its count when the caller already knows it, instead of asking the database
    with a COUNT(*) over every row of the list. Without one it counts, as Django's does."""

    def __init__(self, object_list, per_page, *, count=None, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        if count is not None:
            self.count = count  # replaces the cached property that would run the COUNT(*)
