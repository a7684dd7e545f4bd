"""A paginator for lists too long to count on every page view."""

from django.core.paginator import Paginator
from django.utils.functional import cached_property

MAX_PAGE_NUMBER = 1_000_000


class LongListPaginator(Paginator):
    """Django's paginator, except that it counts no more rows than it must.

    Given `count`, it trusts it (the caller knows it without a COUNT(*), as the usage page does from
    its rollup). Given `bound`, it counts at most that many rows, or as many as reach one page past
    the page asked for, whichever is more: a list longer than that has `count_exceeds_bound` set and
    the count is a lower bound, enough to offer the next page. Paging on past the bound counts
    further, as far as the OFFSET of that page reads anyway."""

    count_exceeds_bound = False

    def __init__(self, object_list, per_page, *, count=None, bound=None, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.bound = bound
        self.reach = 0
        if count is not None:
            self.count = count  # replaces the cached property that would run the COUNT(*)

    def get_page(self, number):
        try:
            # Capped so that the LIMIT of the count below stays a number the database takes (a page
            # number of 30 digits would overflow it): no list is paged this far.
            number = min(max(1, int(number)), MAX_PAGE_NUMBER)
        except (TypeError, ValueError):
            number = 1  # as Django's get_page does with a missing or malformed number
        self.reach = number * self.per_page
        return super().get_page(number)

    @cached_property
    def count(self):
        if self.bound is None:
            return super().count
        limit = max(self.bound, self.reach + self.per_page) + 1
        counted = self.object_list[:limit].count()  # SELECT COUNT(*) FROM (... LIMIT limit)
        self.count_exceeds_bound = counted == limit
        return counted - 1 if self.count_exceeds_bound else counted
